//! `sparkcr-edge prefetch`: warms a running edge's cache (for a box about to go into an
//! air-gapped network) by pulling every image of a list through the edge's own registry
//! API, so the daemon stores the manifests, the tag → digest mappings and every blob.
//! Already cached blobs are skipped, so a re-run after an interruption resumes.
//!
//! Owns: reading reference lists, walking images, progress and the summary. Talks to the
//! daemon only over HTTP; must not open the store.

pub mod edge_client;
pub mod image_ref;

use edge_client::{EdgeClient, PlatformChoice};
use image_ref::ImageRef;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::fmt::Write as _;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// One line of input: where it came from and what it parsed to.
#[derive(Debug)]
pub struct RequestedImage {
    /// `list.txt:3` or `argument 2`.
    pub source: String,
    pub image: Result<ImageRef, String>,
}

/// Reads a reference list: one per line, `#` comments and blank lines ignored.
pub fn read_list(path: &std::path::Path, text: &str) -> Vec<RequestedImage> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.split('#').next().unwrap_or("").trim();
            (!line.is_empty()).then(|| RequestedImage {
                source: format!("{}:{}", path.display(), i + 1),
                image: ImageRef::parse(line).map_err(|e| e.to_string()),
            })
        })
        .collect()
}

pub fn from_args(args: &[String]) -> Vec<RequestedImage> {
    args.iter()
        .enumerate()
        .map(|(i, a)| RequestedImage {
            source: format!("argument {}", i + 1),
            image: ImageRef::parse(a).map_err(|e| e.to_string()),
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct ImageOutcome {
    pub label: String,
    pub error: Option<String>,
    pub blobs: usize,
    pub fetched_bytes: u64,
    pub cached_bytes: u64,
}

#[derive(Debug, Default)]
pub struct PrefetchSummary {
    pub images: Vec<ImageOutcome>,
}

impl PrefetchSummary {
    pub fn failures(&self) -> usize {
        self.images.iter().filter(|i| i.error.is_some()).count()
    }
}

impl std::fmt::Display for PrefetchSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = self
            .images
            .iter()
            .map(|i| i.label.len())
            .max()
            .unwrap_or(5)
            .clamp(5, 80);
        writeln!(
            f,
            "{:<width$}  {:>6}  {:>12}  {:>14}  result",
            "image", "blobs", "fetched", "already cached"
        )?;
        for i in &self.images {
            let result = match &i.error {
                None => "ok".to_string(),
                Some(e) => format!("FAILED: {e}"),
            };
            writeln!(
                f,
                "{:<width$}  {:>6}  {:>12}  {:>14}  {result}",
                i.label,
                i.blobs,
                human(i.fetched_bytes),
                human(i.cached_bytes)
            )?;
        }
        let ok = self.images.len() - self.failures();
        let fetched: u64 = self.images.iter().map(|i| i.fetched_bytes).sum();
        let cached: u64 = self.images.iter().map(|i| i.cached_bytes).sum();
        writeln!(
            f,
            "{ok} of {} images ready; {} fetched, {} already cached; {} failed",
            self.images.len(),
            human(fetched),
            human(cached),
            self.failures()
        )
    }
}

pub fn human(n: u64) -> String {
    let mut s = String::new();
    let units = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (u, name) in units {
        if n >= u {
            let _ = write!(s, "{:.1} {name}", n as f64 / u as f64);
            return s;
        }
    }
    format!("{n} B")
}

pub struct PrefetchOptions {
    pub edge: String,
    pub platforms: PlatformChoice,
    pub concurrency: usize,
    /// Extra CA certificates (PEM) for an HTTPS edge.
    pub ca: Option<std::path::PathBuf>,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
}

/// Prefetches every requested image; never stops at the first failure.
pub async fn run(
    requested: Vec<RequestedImage>,
    opts: &PrefetchOptions,
) -> Result<PrefetchSummary, edge_client::EdgeClientError> {
    let client = EdgeClient::new(&opts.edge, opts.ca.as_deref())?;
    let multi = if opts.progress {
        MultiProgress::new()
    } else {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    };
    let total = multi.add(ProgressBar::new(0));
    total.set_style(
        ProgressStyle::with_template(
            "total {bytes}/{total_bytes} {wide_bar} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut summary = PrefetchSummary::default();
    for req in requested {
        let image = match req.image {
            Ok(i) => i,
            Err(e) => {
                summary.images.push(ImageOutcome {
                    label: req.source.clone(),
                    error: Some(format!("{}: {e}", req.source)),
                    blobs: 0,
                    fetched_bytes: 0,
                    cached_bytes: 0,
                });
                continue;
            }
        };
        let bar = multi.insert_before(&total, ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template("{msg:40!} {pos}/{len} blobs {wide_bar}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(image.to_string());
        let outcome = prefetch_image(&client, &image, opts, &permits, &bar, &total).await;
        bar.finish();
        summary.images.push(outcome);
    }
    total.finish_and_clear();
    Ok(summary)
}

async fn prefetch_image(
    client: &EdgeClient,
    image: &ImageRef,
    opts: &PrefetchOptions,
    permits: &Arc<Semaphore>,
    bar: &ProgressBar,
    total: &ProgressBar,
) -> ImageOutcome {
    let mut out = ImageOutcome {
        label: image.to_string(),
        error: None,
        blobs: 0,
        fetched_bytes: 0,
        cached_bytes: 0,
    };
    let plan = match client.plan(image, &opts.platforms).await {
        Ok(p) => p,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    out.blobs = plan.blobs.len();
    bar.set_length(plan.blobs.len() as u64);
    total.inc_length(plan.blobs.iter().map(|b| b.size).sum());
    let mut tasks = Vec::new();
    for blob in plan.blobs {
        let (client, image, permits, bar, total) = (
            client.clone(),
            image.clone(),
            permits.clone(),
            bar.clone(),
            total.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.ok();
            let result = match client.blob_is_cached(&image, &blob.digest).await {
                Ok(true) => {
                    total.inc(blob.size);
                    Ok((0, blob.size))
                }
                Ok(false) => {
                    let t = total.clone();
                    client
                        .fetch_blob(&image, &blob.digest, move |piece| {
                            t.inc(piece.len() as u64);
                            Ok(())
                        })
                        .await
                        .map(|n| (n, 0))
                }
                Err(e) => Err(e),
            };
            bar.inc(1);
            result
        }));
    }
    for t in tasks {
        match t.await {
            Ok(Ok((fetched, cached))) => {
                out.fetched_bytes += fetched;
                out.cached_bytes += cached;
            }
            Ok(Err(e)) => {
                out.error.get_or_insert(e.to_string());
            }
            Err(e) => {
                out.error.get_or_insert(format!("task failed: {e}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_files_report_line_numbers() {
        let list = read_list(
            std::path::Path::new("images.txt"),
            "# warm-up\nnginx:1.27\n\nNot A Ref  # broken\nghcr.io/org/img@sha256:zz\n",
        );
        assert_eq!(list.len(), 3);
        assert!(list[0].image.is_ok());
        assert_eq!(list[1].source, "images.txt:4");
        assert!(list[1].image.is_err());
        assert_eq!(list[2].source, "images.txt:5");
        assert!(list[2].image.as_ref().is_err_and(|e| e.contains("sha256")));
    }
}
