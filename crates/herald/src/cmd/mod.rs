//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod publish;
pub(crate) mod serve;
pub(crate) mod status;
pub(crate) mod subscribe;
pub(crate) mod token;
