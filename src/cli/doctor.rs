//! `doctor`: on a client machine, runs the library's checks and prints one line each.
//!
//! Must not: check anything itself (`sparkcr_edge::doctor` owns the checks).

use super::{small_runtime, Failure};
use sparkcr_edge::doctor::{self, DoctorOptions, EdgeUrl, Verdict};
use sparkcr_edge::prefetch::image_ref::ImageRef;
use std::path::PathBuf;

pub fn run(
    edge: &str,
    image: Option<&str>,
    ca_files: Vec<PathBuf>,
    offline: bool,
    root: PathBuf,
) -> Result<(), Failure> {
    let opts = DoctorOptions {
        edge: EdgeUrl::parse(edge).map_err(Failure::Config)?,
        root,
        image: image
            .map(ImageRef::parse)
            .transpose()
            .map_err(|e| Failure::Config(e.to_string()))?,
        ca_files,
        offline,
    };
    let checks = small_runtime()?.block_on(doctor::run(&opts));
    for c in &checks {
        println!("{c}");
    }
    if doctor::has_problem(&checks) {
        return Err(Failure::runtime(format!(
            "{} problem(s) found; fix them in the order shown",
            checks
                .iter()
                .filter(|c| c.verdict == Verdict::Problem)
                .count()
        )));
    }
    println!("no problems found");
    Ok(())
}
