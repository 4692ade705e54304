//! The container runtime (`runtime.kind = "docker"`): build steps and the start command run in
//! containers of the image `.endor.toml` names (`image = "..."`, else `runtime.image`), through
//! the Docker Engine API (bollard), never the `docker` command line.
//!
//! Each container runs as the site's uid with the same limits as the sandbox (memory, CPU,
//! processes), every capability dropped and `no-new-privileges`, its checkout and its site's
//! live folder bind-mounted at their own paths, on a bridge network of its own site (Docker
//! keeps bridges apart, so no preview reaches another; the host's services listen on its
//! loopback, which a container does not share). The app's port is published on the host's
//! loopback only, for the gateway; so inside a container the app must listen on 0.0.0.0.
//! Images are never pulled implicitly at build time: one missing locally is pulled once,
//! and a failed pull is the preview's reason.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::container::{
    AttachContainerOptions, AttachContainerResults, Config, CreateContainerOptions,
    RemoveContainerOptions,
};
use bollard::models::{HostConfig, PortBinding};
use bollard::network::CreateNetworkOptions;
use futures_util::StreamExt;

use super::Limits;

/// What a container of a site is made of.
#[derive(Debug, Clone)]
pub struct Spec {
    pub image: String,
    /// The site's id: names its network and containers.
    pub key: String,
    pub uid: Option<u32>,
    pub workdir: PathBuf,
    pub binds: Vec<PathBuf>,
    /// Socket folders, `(short name, real folder)`: the real folder bound at the short name.
    pub sockets: Vec<(PathBuf, PathBuf)>,
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// Published on this address (`runtime.advertise`; the app's `PORT`).
    pub port: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
#[error("docker: {0}")]
pub struct DockerError(pub String);

impl From<bollard::errors::Error> for DockerError {
    fn from(e: bollard::errors::Error) -> Self {
        DockerError(e.to_string())
    }
}

/// A connection to the Docker Engine.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
}

/// How a container ended.
#[derive(Debug, Clone)]
pub struct Ended {
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
}

impl Engine {
    /// The engine on its usual socket (`DOCKER_HOST` is not read: endor's env is its own).
    pub fn connect() -> Result<Self, DockerError> {
        let docker =
            Docker::connect_with_socket("/var/run/docker.sock", 120, bollard::API_DEFAULT_VERSION)?;
        Ok(Self { docker })
    }

    /// The engine's version, or why it cannot be reached.
    pub async fn version(&self) -> Result<String, DockerError> {
        let v = self.docker.version().await?;
        Ok(format!(
            "Docker Engine {} (API {})",
            v.version.unwrap_or_default(),
            v.api_version.unwrap_or_default()
        ))
    }

    fn network(key: &str) -> String {
        format!("endor-{key}")
    }

    /// The image, pulled once when it is not on this host.
    async fn ensure_image(&self, image: &str) -> Result<(), DockerError> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let mut pull = self.docker.create_image(
            Some(bollard::image::CreateImageOptions {
                from_image: image,
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(step) = pull.next().await {
            step.map_err(|e| {
                DockerError(format!(
                    "image {image} is not on this host and could not be pulled: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// The site's bridge network, made when missing.
    async fn ensure_network(&self, key: &str) -> Result<String, DockerError> {
        let name = Self::network(key);
        if self
            .docker
            .inspect_network::<String>(&name, None)
            .await
            .is_ok()
        {
            return Ok(name);
        }
        let made = self
            .docker
            .create_network(CreateNetworkOptions {
                name: name.clone(),
                driver: "bridge".to_string(),
                labels: HashMap::from([("endor.site".to_string(), key.to_string())]),
                ..Default::default()
            })
            .await;
        match made {
            Ok(_) => Ok(name),
            // Two launches at once: the other made it.
            Err(_)
                if self
                    .docker
                    .inspect_network::<String>(&name, None)
                    .await
                    .is_ok() =>
            {
                Ok(name)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Create and start a container running `/bin/sh -c script`; returns its id and a stream
    /// of its output (stdout and stderr as they come, each chunk with its pipe).
    pub async fn start(
        &self,
        spec: &Spec,
        script: &str,
        extra_env: &[(String, String)],
    ) -> Result<
        (
            String,
            futures_util::stream::BoxStream<'static, (super::Pipe, Vec<u8>)>,
        ),
        DockerError,
    > {
        self.ensure_image(&spec.image).await?;
        let network = self.ensure_network(&spec.key).await?;
        let l = &spec.limits;
        let port_key = spec.port.map(|a| format!("{}/tcp", a.port()));
        let host = HostConfig {
            binds: Some(
                spec.binds
                    .iter()
                    .map(|b| format!("{}:{}", b.display(), b.display()))
                    .chain(
                        spec.sockets
                            .iter()
                            .map(|(alias, real)| format!("{}:{}", real.display(), alias.display())),
                    )
                    .collect(),
            ),
            memory: Some(l.memory as i64),
            memory_swap: Some(l.memory as i64),
            nano_cpus: Some((l.cpus * 1e9) as i64),
            pids_limit: Some(l.processes as i64),
            network_mode: Some(network),
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            init: Some(true),
            port_bindings: port_key.clone().map(|k| {
                HashMap::from([(
                    k,
                    Some(vec![PortBinding {
                        host_ip: spec.port.map(|a| a.ip().to_string()),
                        host_port: spec.port.map(|a| a.port().to_string()),
                    }]),
                )])
            }),
            ..Default::default()
        };
        let config = Config {
            image: Some(spec.image.clone()),
            cmd: Some(vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                script.to_string(),
            ]),
            env: Some(
                spec.env
                    .iter()
                    .chain(extra_env)
                    .map(|(k, v)| format!("{k}={v}"))
                    .chain([
                        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
                        format!("HOME={}", spec.workdir.display()),
                        "LANG=C.UTF-8".to_string(),
                    ])
                    .collect(),
            ),
            user: spec.uid.map(|u| format!("{u}:{u}")),
            working_dir: Some(spec.workdir.display().to_string()),
            exposed_ports: port_key.map(|k| HashMap::from([(k, HashMap::new())])),
            labels: Some(HashMap::from([(
                "endor.site".to_string(),
                spec.key.clone(),
            )])),
            host_config: Some(host),
            ..Default::default()
        };
        let made = self
            .docker
            .create_container(None::<CreateContainerOptions<String>>, config)
            .await?;
        let id = made.id;
        let AttachContainerResults { output, .. } = self
            .docker
            .attach_container(
                &id,
                Some(AttachContainerOptions::<String> {
                    stdout: Some(true),
                    stderr: Some(true),
                    stream: Some(true),
                    // Attached before the start: there is nothing to replay, and a replay
                    // could repeat what the stream also sends.
                    logs: Some(false),
                    ..Default::default()
                }),
            )
            .await?;
        if let Err(e) = self.docker.start_container::<String>(&id, None).await {
            self.remove(&id).await;
            return Err(e.into());
        }
        let output = output
            .filter_map(|chunk| async move {
                let pipe = match &chunk {
                    Ok(bollard::container::LogOutput::StdErr { .. }) => super::Pipe::Err,
                    _ => super::Pipe::Out,
                };
                chunk.ok().map(|c| (pipe, c.into_bytes().to_vec()))
            })
            .boxed();
        Ok((id, output))
    }

    /// Wait for a container to end; how it ended.
    pub async fn wait(&self, id: &str) -> Ended {
        let mut waiting = self.docker.wait_container::<String>(id, None);
        while waiting.next().await.is_some() {}
        let state = self
            .docker
            .inspect_container(id, None)
            .await
            .ok()
            .and_then(|c| c.state);
        Ended {
            exit_code: state.as_ref().and_then(|s| s.exit_code),
            oom_killed: state.and_then(|s| s.oom_killed).unwrap_or(false),
        }
    }

    /// How many times the kernel killed a process of the container for memory (its cgroup's
    /// counter: Docker's `OOMKilled` says so only when the container's main process was the
    /// one killed).
    pub fn oom_kills(&self, id: &str) -> u64 {
        [
            format!("/sys/fs/cgroup/memory/docker/{id}/memory.oom_control"),
            format!("/sys/fs/cgroup/docker/{id}/memory.events"),
            format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.events"),
        ]
        .iter()
        .map(std::path::Path::new)
        .find(|p| p.exists())
        .map_or(0, |p| super::cgroup::counter(p, "oom_kill"))
    }

    /// Kill and remove a container (nothing when it is gone).
    pub async fn remove(&self, id: &str) {
        let _ = self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }

    /// Remove every container and the network of a site (its teardown).
    pub async fn release(&self, key: &str) {
        let filters = HashMap::from([("label".to_string(), vec![format!("endor.site={key}")])]);
        if let Ok(list) = self
            .docker
            .list_containers(Some(bollard::container::ListContainersOptions {
                all: true,
                filters,
                ..Default::default()
            }))
            .await
        {
            for c in list {
                if let Some(id) = c.id {
                    self.remove(&id).await;
                }
            }
        }
        let _ = self.docker.remove_network(&Self::network(key)).await;
    }
}

/// Give a container a moment to go after a kill.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
