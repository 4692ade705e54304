//! `endor site exec`: an ad-hoc command in a site's sandbox (its uid, its cgroup, its folders,
//! its database sockets) with the site's environment. Its output goes to the caller as it
//! comes and, with who ran what and how it ended, into the site's `exec` log.

use std::path::PathBuf;

use crate::logs::{Entry, LineSplitter, Service, Stream};
use crate::runtime::{self, ExecEnd, Pipe};
use crate::store::{Site, SiteState};

use super::lifecycle::Lifecycle;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("no site named {0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

impl Lifecycle {
    /// Run `argv` (as it is: no shell between) in the site `name`'s sandbox, in its current
    /// checkout (or its files folder when it has none), handing output to `sink`. `who` is
    /// written to the `exec` log with the command and its end.
    pub async fn exec(
        &self,
        name: &str,
        argv: &[String],
        who: &str,
        mut sink: impl FnMut(Pipe, &[u8]),
    ) -> Result<ExecEnd, ExecError> {
        crate::sites::validate_site_name(name).map_err(|e| ExecError::Invalid(e.to_string()))?;
        if argv.is_empty() || argv[0].is_empty() {
            return Err(ExecError::Invalid(
                "no command: endor site exec SITE -- COMMAND [ARGS…]".into(),
            ));
        }
        let failed = |e: &dyn std::fmt::Display| ExecError::Failed(e.to_string());
        let site = self
            .store
            .site_by_name(name)
            .await
            .map_err(|e| failed(&e))?
            .ok_or_else(|| ExecError::NotFound(name.to_string()))?;
        if site.state != SiteState::Active {
            return Err(ExecError::Invalid(format!(
                "site {name} is {}: nothing runs there",
                site.state
            )));
        }
        let cwd = self.exec_dir(&site);
        let env = self.site_env(&site).await.map_err(|e| failed(&e))?;
        let mut sbox = self.site_box(&site, None).await.map_err(|e| failed(&e))?;
        // A site no preview launched (made with `site create`) has not been handed to its
        // own uid yet: its code, this command included, owns its data.
        let owner = self.host.owner(&sbox).map_err(|e| failed(&e))?;
        let owned = |uid: u32| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(self.sites.files_dir(&site)).is_ok_and(|m| m.uid() == uid)
        };
        if let Some((uid, _)) = owner
            && !owned(uid)
        {
            sbox = self.hand_over(&site).await.map_err(|e| failed(&e))?;
        }
        let sandbox = self
            .host
            .sandbox(&sbox, &cwd, env, None)
            .map_err(|e| failed(&e))?;
        let what = serde_json::to_string(argv).unwrap_or_default();
        let event = |text: String| {
            Entry::now(Service::Exec, None, text)
                .with("who", who)
                .with("command", argv.to_vec())
        };
        self.logs.write(
            &site.id,
            event(format!(
                "[endor] exec by {who} in {}: {what}",
                cwd.display()
            ))
            .with("cwd", cwd.display().to_string()),
        );
        // The command may write into the checkout a static preview is served from: when it
        // ends, however it ends (its caller gone included), the site's route is written again,
        // which moves the store's change counter, so gateways read its files again.
        let _touch = TouchRoute {
            store: self.store.clone(),
            site: name.to_string(),
        };
        let cap = self.config.runtime.output_cap;
        let max = self.logs.limits().max_line_bytes;
        let mut kept = 0usize;
        let (mut out, mut err) = (LineSplitter::default(), LineSplitter::default());
        let mut lines = Vec::new();
        let log_lines = |stream: Stream, lines: &mut Vec<String>| {
            let _ = self
                .logs
                .append_text(&site.id, Service::Exec, Some(stream), lines);
        };
        let end = runtime::exec(&sandbox, argv, |pipe, chunk| {
            sink(pipe, chunk);
            // What the log keeps of one command's output.
            let take = chunk.len().min(cap.saturating_sub(kept));
            kept += take;
            let (splitter, stream) = match pipe {
                Pipe::Out => (&mut out, Stream::Stdout),
                Pipe::Err => (&mut err, Stream::Stderr),
            };
            splitter.push(&chunk[..take], max, &mut lines);
            log_lines(stream, &mut lines);
        })
        .await
        .map_err(|e| failed(&e))?;
        for (splitter, stream) in [(&mut out, Stream::Stdout), (&mut err, Stream::Stderr)] {
            lines.extend(splitter.flush(max));
            log_lines(stream, &mut lines);
        }
        if kept >= cap {
            self.logs.write(
                &site.id,
                event("[endor] output past runtime.output_cap is not kept".into()),
            );
        }
        let how = match (&end.killed, end.exit_code) {
            (Some(why), _) => format!("was killed: {why}"),
            (None, Some(code)) => format!("exit code {code}"),
            (None, None) => "ended by a signal".to_string(),
        };
        self.logs.write(
            &site.id,
            event(format!("[endor] exec by {who}: {what} {how}"))
                .with("exit_code", end.exit_code)
                .with("killed", end.killed.clone()),
        );
        tracing::info!(site = %name, %who, command = %what, end = %how, "site exec");
        Ok(end)
    }

    /// Where an ad-hoc command runs: the site's newest checkout, or its files.
    fn exec_dir(&self, site: &Site) -> PathBuf {
        let newest = std::fs::read_dir(self.sites.site_dir(site).join("code"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        match newest {
            Some(e) => e.path(),
            None => self.sites.files_dir(site),
        }
    }
}

/// Writes the site's route again when dropped (see [`Lifecycle::exec`]).
struct TouchRoute {
    store: std::sync::Arc<dyn crate::store::Store>,
    site: String,
}

impl Drop for TouchRoute {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, site) = (self.store.clone(), std::mem::take(&mut self.site));
        rt.spawn(async move {
            if let Ok(Some(mut route)) = store.route(&site).await {
                route.updated_at = crate::now_ms();
                if let Err(e) = store.put_route(&route).await {
                    tracing::warn!(site = %site, error = %e, "could not mark the site's files as changed after site exec");
                }
            }
        });
    }
}
