//! Usage and cost per site (what billing members see, SPEC §2): hours alive, physical bytes
//! its data really occupies, CPU seconds of its processes, priced by `[usage]` rates, per
//! workspace and calendar month (UTC).
//!
//! - **Hours alive** come from the site row (`created_at` .. `deleted_at` or now), clipped to
//!   the month.
//! - **Physical bytes** are measured with `FIEMAP`: a clone is charged only for extents it does
//!   not share (what it wrote since the reflink clone), not for its logical size; a site with
//!   no parent is charged for its unshared extents plus each shared extent once (the data its
//!   clones and generations share is its own). Without `FIEMAP` (e.g. tmpfs) allocated blocks
//!   are counted. Storage is priced over time: each sample adds GiB-hours (the trapezoid of the
//!   previous and the current measure over the time between them).
//! - **CPU** is read from `/proc/{pid}/stat` of every process endor started for the site
//!   (found as the reaper finds them); each sample adds what each process used since the
//!   previous reading, kept per (pid, start time) in the store. CPU of a process that ends
//!   between two samples after the last reading is not counted.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use crate::config::{Config, UsageConfig};
use crate::ids::SiteId;
use crate::sites::Sites;
use crate::store::{SiteState, SiteUsage, Store, StoreError, UsageProc, Workspace};

const GIB: f64 = (1u64 << 30) as f64;
const HOUR_MS: f64 = 3_600_000.0;
/// Hours in the month the `gib_month` rate is for.
const MONTH_HOURS: f64 = 730.0;

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a tree of files occupies on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Footprint {
    /// Sum of file sizes.
    pub logical: u64,
    /// Bytes in extents no other file shares (or allocated blocks without FIEMAP).
    pub exclusive: u64,
    /// Bytes in shared extents, each physical extent counted once.
    pub shared: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

const EXTENTS: usize = 64;

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; EXTENTS],
}

/// `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

/// The extents of one open file: (physical offset, length, shared?). `None` when the
/// filesystem has no FIEMAP.
fn extents(file: &std::fs::File) -> Option<Vec<(u64, u64, bool)>> {
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    let mut start = 0u64;
    loop {
        let mut fm = Fiemap {
            start,
            length: u64::MAX - start,
            flags: 0,
            mapped_extents: 0,
            extent_count: EXTENTS as u32,
            reserved: 0,
            extents: [FiemapExtent::default(); EXTENTS],
        };
        // SAFETY: FS_IOC_FIEMAP reads and writes a `struct fiemap` followed by `extent_count`
        // extents: `Fiemap` is that layout (repr(C)) with room for EXTENTS of them.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, &mut fm) };
        if rc != 0 {
            return None;
        }
        let n = (fm.mapped_extents as usize).min(EXTENTS);
        if n == 0 {
            return Some(out);
        }
        for e in &fm.extents[..n] {
            out.push((e.physical, e.length, e.flags & FIEMAP_EXTENT_SHARED != 0));
        }
        let last = fm.extents[n - 1];
        if last.flags & FIEMAP_EXTENT_LAST != 0 {
            return Some(out);
        }
        start = last.logical + last.length;
    }
}

/// Measure the tree under `root` (symlinks are not followed; unreadable entries are skipped).
pub fn footprint(root: &Path) -> Footprint {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut fp = Footprint::default();
    let mut seen_shared: HashSet<u64> = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.file_type() else { continue };
            let path = e.path();
            if md.is_dir() {
                stack.push(path);
                continue;
            }
            if !md.is_file() {
                continue;
            }
            // Never follow a link swapped in since the listing, never block on a FIFO.
            let Ok(file) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
            else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            fp.logical += meta.len();
            match extents(&file) {
                Some(list) => {
                    for (physical, len, shared) in list {
                        if !shared {
                            fp.exclusive += len;
                        } else if seen_shared.insert(physical) {
                            fp.shared += len;
                        }
                    }
                }
                None => fp.exclusive += meta.blocks() * 512,
            }
        }
    }
    fp
}

/// The bytes a site is charged for: a clone its exclusive extents, a root site also the
/// shared ones (once).
pub fn charged_bytes(fp: &Footprint, has_parent: bool) -> u64 {
    if has_parent {
        fp.exclusive
    } else {
        fp.exclusive + fp.shared
    }
}

/// `YYYY-MM` of a time (Unix ms, UTC).
pub fn month_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m")
        .to_string()
}

/// The month's bounds in Unix ms: `[from, to)`.
pub fn month_bounds(month: &str) -> Result<(i64, i64), UsageError> {
    let bad = || {
        UsageError::Invalid(format!(
            "month must be YYYY-MM, got `{}`",
            month.escape_debug()
        ))
    };
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let first = chrono::NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(bad)?;
    let next = if m == 12 {
        chrono::NaiveDate::from_ymd_opt(y + 1, 1, 1)
    } else {
        chrono::NaiveDate::from_ymd_opt(y, m + 1, 1)
    }
    .ok_or_else(bad)?;
    let ms = |d: chrono::NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc()
            .timestamp_millis()
    };
    Ok((ms(first), ms(next)))
}

/// What one sample added.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SampleReport {
    pub sites: usize,
    pub processes: usize,
    pub cpu_ms: i64,
    pub bytes: u64,
}

/// Take one sample of every live site: physical storage (GiB-hours since the last sample) and
/// CPU of its processes (since their last reading).
pub async fn sample(
    store: &dyn Store,
    sites: &Sites,
    now: i64,
) -> Result<SampleReport, UsageError> {
    let mut report = SampleReport::default();
    let month = month_of(now);
    let live: Vec<_> = store
        .list_sites()
        .await?
        .into_iter()
        .filter(|s| matches!(s.state, SiteState::Active | SiteState::Creating))
        .collect();
    // CPU first: the processes of every live site.
    let roots = sites.roots();
    let procs = tokio::task::spawn_blocking(move || {
        crate::procfs::site_processes(&roots)
            .into_iter()
            .filter_map(|(pid, site)| {
                crate::procfs::process_cpu(pid).map(|(start, cpu)| (pid, site, start, cpu))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let marks: HashMap<(i64, i64), UsageProc> = store
        .usage_procs()
        .await?
        .into_iter()
        .map(|p| ((p.pid, p.start_ticks), p))
        .collect();
    let mut alive: HashSet<(i64, i64)> = HashSet::new();
    let mut cpu: HashMap<SiteId, i64> = HashMap::new();
    for (pid, site, start, cpu_ms) in procs {
        // The site id a process's environment names (`ENDOR_FILES_DIR` under the root).
        let site = SiteId::from(site);
        let key = (pid as i64, start as i64);
        alive.insert(key);
        let before = marks.get(&key).map(|m| m.cpu_ms).unwrap_or(0);
        let delta = (cpu_ms as i64 - before).max(0);
        *cpu.entry(site.clone()).or_default() += delta;
        report.cpu_ms += delta;
        report.processes += 1;
        store
            .put_usage_proc(&UsageProc {
                site_id: site,
                pid: key.0,
                start_ticks: key.1,
                cpu_ms: cpu_ms as i64,
            })
            .await?;
    }
    for key in marks.keys().filter(|k| !alive.contains(k)) {
        store.delete_usage_proc(key.0, key.1).await?;
    }
    for site in live {
        let dir = sites.site_dir(&site);
        let fp = tokio::task::spawn_blocking(move || footprint(&dir))
            .await
            .unwrap_or_default();
        let bytes = charged_bytes(&fp, site.parent_id.is_some());
        let (prev_bytes, since) = match store.last_storage_sample(&site.id).await? {
            Some((b, at)) => (b as f64, at.max(site.created_at)),
            None => (bytes as f64, site.created_at),
        };
        let hours = ((now - since).max(0)) as f64 / HOUR_MS;
        let gib_hours = (prev_bytes + bytes as f64) / 2.0 / GIB * hours;
        store
            .add_site_usage(&SiteUsage {
                site_id: site.id.clone(),
                month: month.clone(),
                cpu_ms: cpu.remove(&site.id).unwrap_or(0),
                gib_hours,
                last_bytes: bytes as i64,
                sampled_at: now.max(1),
            })
            .await?;
        report.sites += 1;
        report.bytes += bytes;
    }
    // CPU of processes whose site is no longer live still counts for that site.
    for (site_id, ms) in cpu {
        store
            .add_site_usage(&SiteUsage {
                site_id,
                month: month.clone(),
                cpu_ms: ms,
                gib_hours: 0.0,
                last_bytes: 0,
                sampled_at: 0,
            })
            .await?;
    }
    Ok(report)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Cost {
    pub alive: f64,
    pub storage: f64,
    pub cpu: f64,
    pub total: f64,
}

impl Cost {
    fn add(&mut self, o: &Cost) {
        self.alive += o.alive;
        self.storage += o.storage;
        self.cpu += o.cpu;
        self.total += o.total;
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SiteLine {
    pub site: String,
    pub site_id: SiteId,
    pub state: SiteState,
    pub parent_id: Option<SiteId>,
    pub hours_alive: f64,
    /// The newest measure of the bytes the site is charged for.
    pub physical_bytes: i64,
    pub gib_hours: f64,
    pub cpu_seconds: f64,
    pub cost: Cost,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Rates {
    pub currency: String,
    pub site_hour: f64,
    pub gib_month: f64,
    pub cpu_hour: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub workspace: String,
    pub month: String,
    pub rates: Rates,
    pub sites: Vec<SiteLine>,
    pub total: Cost,
}

fn round(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// Price a site's month.
pub fn price(rates: &UsageConfig, hours_alive: f64, gib_hours: f64, cpu_seconds: f64) -> Cost {
    let alive = round(hours_alive * rates.site_hour);
    let storage = round(gib_hours / MONTH_HOURS * rates.gib_month);
    let cpu = round(cpu_seconds / 3600.0 * rates.cpu_hour);
    Cost {
        alive,
        storage,
        cpu,
        total: round(alive + storage + cpu),
    }
}

/// Usage and cost of every site of `ws` alive during `month` (default: the current month).
pub async fn report(
    store: &dyn Store,
    config: &Config,
    ws: &Workspace,
    month: Option<&str>,
) -> Result<UsageReport, UsageError> {
    let now = crate::now_ms();
    let month = month.map(str::to_string).unwrap_or_else(|| month_of(now));
    let (from, to) = month_bounds(&month)?;
    let usage: HashMap<SiteId, SiteUsage> = store
        .site_usage(&month)
        .await?
        .into_iter()
        .map(|u| (u.site_id.clone(), u))
        .collect();
    let rates = &config.usage;
    let mut lines = Vec::new();
    let mut total = Cost::default();
    for s in store.workspace_sites_between(&ws.id, from, to).await? {
        let end = s.deleted_at.unwrap_or(now).min(to).min(now);
        let hours_alive = round(((end - s.created_at.max(from)).max(0)) as f64 / HOUR_MS);
        let u = usage.get(&s.id);
        let gib_hours = round(u.map(|u| u.gib_hours).unwrap_or(0.0));
        let cpu_seconds = u.map(|u| u.cpu_ms).unwrap_or(0) as f64 / 1000.0;
        let cost = price(rates, hours_alive, gib_hours, cpu_seconds);
        total.add(&cost);
        lines.push(SiteLine {
            site: s.name.clone(),
            site_id: s.id.clone(),
            state: s.state,
            parent_id: s.parent_id.clone(),
            hours_alive,
            physical_bytes: match u {
                Some(u) => u.last_bytes,
                None => store
                    .last_storage_sample(&s.id)
                    .await?
                    .map(|(b, _)| b)
                    .unwrap_or(0),
            },
            gib_hours,
            cpu_seconds,
            cost,
        });
    }
    total = Cost {
        alive: round(total.alive),
        storage: round(total.storage),
        cpu: round(total.cpu),
        total: round(total.total),
    };
    Ok(UsageReport {
        workspace: ws.name.clone(),
        month,
        rates: Rates {
            currency: rates.currency.clone(),
            site_hour: rates.site_hour,
            gib_month: rates.gib_month,
            cpu_hour: rates.cpu_hour,
        },
        sites: lines,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        let (a, b) = month_bounds("2026-11").unwrap();
        assert_eq!(month_of(a), "2026-11");
        assert_eq!(month_of(b), "2026-12");
        assert_eq!(b - a, 30 * 24 * 3_600_000);
        let (a, b) = month_bounds("2026-12").unwrap();
        assert_eq!(month_of(b), "2027-01");
        assert_eq!(b - a, 31 * 24 * 3_600_000);
        for bad in [
            "2026-13", "2026-1", "26-11", "2026/11", "", "2026-00", "x-y",
        ] {
            assert!(month_bounds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pricing() {
        let rates = UsageConfig {
            site_hour: 0.01,
            gib_month: 0.73,
            cpu_hour: 0.36,
            ..Default::default()
        };
        let c = price(&rates, 10.0, 730.0, 3600.0);
        assert_eq!(c.alive, 0.1);
        assert_eq!(c.storage, 0.73);
        assert_eq!(c.cpu, 0.36);
        assert_eq!(c.total, 1.19);
    }

    #[test]
    fn footprint_counts_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a"), vec![7u8; 100_000]).unwrap();
        std::fs::write(d.path().join("b"), b"hello").unwrap();
        let fp = footprint(d.path());
        assert_eq!(fp.logical, 100_005);
        // Whatever the filesystem, 100 kB of written data occupies at least that much.
        assert!(fp.exclusive + fp.shared >= 100_000, "{fp:?}");
        // A FIFO and a symlink out of the tree are not read (and do not block the walk).
        let fifo = d.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path we own, NUL-terminated.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        assert_eq!(footprint(d.path()).logical, 100_005);
    }
}
