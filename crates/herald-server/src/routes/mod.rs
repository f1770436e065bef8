//! Route handlers, one module per area of docs/api.md.

pub(crate) mod admin;
pub(crate) mod dashboard;
pub(crate) mod herald_js;
pub(crate) mod ops;
pub(crate) mod publish;
pub(crate) mod subscribe;
