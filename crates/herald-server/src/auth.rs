//! Who is asking, and what they may do.
//!
//! Today Herald has one mode, dev mode, where everything is allowed and a
//! subscriber names itself with `?user=`. Token modes (JWT, docs/api.md "Identity")
//! add variants here; handlers only ever see an [`Access`].

use std::sync::Arc;

use herald_core::topic::validate_user_id;

use crate::error::ApiError;
use crate::query::QueryPairs;

/// How identities are established.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Auth {
    /// No tokens: identity from `?user=`, every route open.
    Dev,
}

/// What one request may do.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// The caller's user id, if it has one.
    pub(crate) user: Option<Arc<str>>,
}

impl Auth {
    /// The access of a subscriber.
    pub(crate) fn subscriber(&self, query: &QueryPairs) -> Result<Access, ApiError> {
        match self {
            Auth::Dev => {
                let user = match query.first("user").filter(|u| !u.is_empty()) {
                    Some(user) => {
                        validate_user_id(user).map_err(|e| ApiError::invalid_user(user, e))?;
                        Some(Arc::from(user))
                    }
                    None => None,
                };
                Ok(Access { user })
            }
        }
    }

    /// Checks that the caller may publish (to anything, in dev mode).
    pub(crate) fn publisher(&self) -> Result<(), ApiError> {
        match self {
            Auth::Dev => Ok(()),
        }
    }

    /// Checks that the caller may use the admin routes.
    pub(crate) fn admin(&self) -> Result<(), ApiError> {
        match self {
            Auth::Dev => Ok(()),
        }
    }
}
