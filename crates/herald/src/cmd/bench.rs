//! `herald bench`: the `herald-bench` load generator under this binary's exit
//! codes.

use crate::config::ConfigError;

pub(crate) use herald_bench::BenchArgs;

/// Runs `herald_bench`; a bad bench flag becomes a [`ConfigError`], so it
/// exits 64 and reads `configuration: …` like every other usage error.
pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    herald_bench::run(args).map_err(|err| match err.downcast::<herald_bench::UsageError>() {
        Ok(herald_bench::UsageError(message)) => ConfigError(message).into(),
        Err(err) => err,
    })
}
