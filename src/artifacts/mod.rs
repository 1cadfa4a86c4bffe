//! Stage 4: the pinned upstream files. The lock says what a cluster needs; the cache
//! holds verified copies; the downloader fills the cache; `extract` unpacks archives.

pub mod cache;
pub mod digest;
pub mod download;
pub mod extract;
pub mod lock;
pub mod oci;
pub mod refresh;

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use cache::{Cache, Entry};
use download::{Fetched, Fetcher, Options};
use lock::Artifact;

/// Fetches `artifacts` (a selection from the lock: [`lock::Lock::for_cluster`] or
/// [`lock::Lock::for_kubernetes`]) into the cache. All files are tried; the errors of those that
/// failed are returned together.
pub fn fetch_all(
    artifacts: Vec<Artifact>,
    cache: &Cache,
    options: Options,
    show_progress: bool,
) -> Result<Vec<(Artifact, Result<Fetched>)>> {
    let fetcher = Fetcher::new(cache, options)?;
    let multi = MultiProgress::with_draw_target(if show_progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let overall = multi.add(ProgressBar::new(artifacts.len() as u64));
    overall.set_style(
        ProgressStyle::with_template("{prefix:>20} [{bar:30}] {pos}/{len} files, {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    overall.set_prefix("all artifacts");
    overall.enable_steady_tick(std::time::Duration::from_millis(250));
    let mut results = Vec::new();
    for artifact in artifacts {
        let bar = multi.insert_before(&overall, ProgressBar::new(artifact.size.unwrap_or(0)));
        bar.set_style(download::file_bar_style());
        bar.set_prefix(artifact.name.clone());
        let result = fetcher.fetch(&artifact, &bar);
        bar.finish_and_clear();
        overall.inc(1);
        results.push((artifact, result));
    }
    overall.finish_and_clear();
    Ok(results)
}

/// The state of each of `artifacts` in the cache, re-verified.
pub fn status(artifacts: &[Artifact], cache: &Cache) -> Result<Vec<(Artifact, Entry)>> {
    artifacts
        .iter()
        .map(|a| {
            let digest = a.digest.clone().or_else(|| cache.observed(&a.url));
            let entry = match &digest {
                Some(d) => cache.check(d)?,
                None => Entry::Missing,
            };
            Ok((a.clone(), entry))
        })
        .collect()
}

/// Pulls `images` (a selection from the lock) into the cache, all of them; a failure of one
/// does not stop the others. One progress bar per image, in bytes.
pub fn pull_all(
    images: Vec<lock::Image>,
    cache: &Cache,
    options: Options,
    show_progress: bool,
) -> Result<Vec<(lock::Image, Result<oci::pull::Pulled>)>> {
    let fetcher = Fetcher::new(cache, options)?;
    let puller = oci::pull::Puller::new(&fetcher)?;
    let multi = MultiProgress::with_draw_target(if show_progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let overall = multi.add(ProgressBar::new(images.len() as u64));
    overall.set_style(
        ProgressStyle::with_template("{prefix:>20} [{bar:30}] {pos}/{len} images, {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    overall.set_prefix("all images");
    overall.enable_steady_tick(std::time::Duration::from_millis(250));
    let mut results = Vec::new();
    for image in images {
        let bar = multi.insert_before(&overall, ProgressBar::new(0));
        bar.set_style(download::file_bar_style());
        bar.set_prefix(image.name.clone());
        let result = puller.pull(&image, &bar);
        bar.finish_and_clear();
        overall.inc(1);
        results.push((image, result));
    }
    overall.finish_and_clear();
    Ok(results)
}

/// What the cache holds of each of `images`, without touching the network: every blob of
/// an image present and verified, or what is missing.
pub fn image_status(images: &[lock::Image], cache: &Cache) -> Vec<(lock::Image, Result<oci::pull::Pulled>)> {
    let options = Options {
        offline: true,
        allow_unpinned: false,
        ..Options::default()
    };
    let Ok(fetcher) = Fetcher::new(cache, options) else {
        return Vec::new();
    };
    let Ok(puller) = oci::pull::Puller::new(&fetcher) else {
        return Vec::new();
    };
    images
        .iter()
        .map(|i| (i.clone(), puller.pull(i, &ProgressBar::hidden())))
        .collect()
}
