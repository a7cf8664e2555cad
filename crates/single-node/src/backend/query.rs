//! Reading sandboxes: get, list with filters and stable pagination, metrics, logs.

use std::collections::BTreeMap;

use crate::backend::SingleNodeBackend;
use crate::error::{Error, Result};
use crate::model::{LogEvent, RuntimeMetrics, SandboxSession, SandboxState};
use crate::state::ActiveSessionRecord;

/// Order of a listing, by start time then id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListOrder {
    /// Oldest first.
    #[default]
    Ascending,
    /// Newest first.
    Descending,
}

/// Filters and paging of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// States to include; empty means running and paused (what E2B lists by default).
    pub states: Vec<SandboxState>,
    /// Metadata pairs that must all be present with these values.
    pub metadata: BTreeMap<String, String>,
    /// Only sandboxes of this template.
    pub template_id: Option<String>,
    /// Only sandboxes started at or after this time (unix milliseconds).
    pub started_after_unix_ms: Option<i64>,
    /// Order.
    pub order: ListOrder,
    /// Page size (default and maximum [`ListQuery::MAX_LIMIT`]).
    pub limit: Option<usize>,
    /// Token from the previous page's [`ListPage::next_token`].
    pub next_token: Option<String>,
}

impl ListQuery {
    /// Largest page.
    pub const MAX_LIMIT: usize = 1000;
    /// Page size when none is given.
    pub const DEFAULT_LIMIT: usize = 100;
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    /// The sandboxes on this page.
    pub sandboxes: Vec<SandboxSession>,
    /// Token for the next page, `None` on the last page.
    pub next_token: Option<String>,
}

/// Position in a listing: the last item's (start time, id). Listing resumes strictly after it,
/// so sandboxes created or deleted between pages never shift the pages.
fn encode_token(record: &ActiveSessionRecord) -> String {
    format!("{}.{}", record.started_at_unix_ms, record.sandbox_id)
}

fn decode_token(token: &str) -> Result<(i64, String)> {
    let invalid = || Error::InvalidRequest(format!("invalid next token {token:?}"));
    let (started, id) = token.split_once('.').ok_or_else(invalid)?;
    let started = started.parse().map_err(|_| invalid())?;
    crate::id::SandboxId::parse(id).map_err(|_| invalid())?;
    Ok((started, id.to_owned()))
}

impl SingleNodeBackend {
    /// One sandbox.
    ///
    /// # Errors
    ///
    /// [`Error::SandboxNotFound`].
    pub fn get(&self, sandbox_id: &str) -> Result<SandboxSession> {
        self.shared
            .state
            .get_active(sandbox_id)
            .map(SandboxSession::new)
            .ok_or_else(|| Error::SandboxNotFound(sandbox_id.to_owned()))
    }

    /// A page of sandboxes matching `query`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] for a malformed token or a limit of 0.
    pub fn list(&self, query: &ListQuery) -> Result<ListPage> {
        let limit = query.limit.unwrap_or(ListQuery::DEFAULT_LIMIT);
        if limit == 0 {
            return Err(Error::InvalidRequest("limit must be at least 1".to_owned()));
        }
        let limit = limit.min(ListQuery::MAX_LIMIT);
        let after = query.next_token.as_deref().map(decode_token).transpose()?;
        let default_states = [SandboxState::Running, SandboxState::Paused];
        let states: &[SandboxState] = if query.states.is_empty() {
            &default_states
        } else {
            &query.states
        };
        let mut matching: Vec<ActiveSessionRecord> = self
            .shared
            .state
            .load_active()
            .into_iter()
            .filter(|record| states.contains(&record.state))
            .filter(|record| {
                query
                    .template_id
                    .as_ref()
                    .is_none_or(|template| &record.template_id == template)
            })
            .filter(|record| {
                query
                    .started_after_unix_ms
                    .is_none_or(|after| record.started_at_unix_ms >= after)
            })
            .filter(|record| {
                query
                    .metadata
                    .iter()
                    .all(|(key, value)| record.metadata.get(key) == Some(value))
            })
            .collect();
        let key =
            |record: &ActiveSessionRecord| (record.started_at_unix_ms, record.sandbox_id.clone());
        matching.sort_by_key(key);
        if query.order == ListOrder::Descending {
            matching.reverse();
        }
        if let Some(after) = after {
            matching.retain(|record| match query.order {
                ListOrder::Ascending => key(record) > after,
                ListOrder::Descending => key(record) < after,
            });
        }
        let more = matching.len() > limit;
        matching.truncate(limit);
        let next_token = if more {
            matching.last().map(encode_token)
        } else {
            None
        };
        Ok(ListPage {
            sandboxes: matching.into_iter().map(SandboxSession::new).collect(),
            next_token,
        })
    }

    /// What a sandbox uses now, as its driver measures it.
    ///
    /// # Errors
    ///
    /// [`Error::SandboxNotFound`], or the driver's error ([`Error::UnsupportedCapability`]
    /// when it cannot measure).
    pub async fn metrics(&self, sandbox_id: &str) -> Result<(SandboxSession, RuntimeMetrics)> {
        let session = self.get(sandbox_id)?;
        let metrics = self.shared.driver.metrics(sandbox_id).await?;
        Ok((session, metrics))
    }

    /// Up to `limit` log events of a sandbox from sequence number `cursor` on (oldest
    /// retained first when `None`).
    ///
    /// # Errors
    ///
    /// [`Error::SandboxNotFound`], or a persistence failure.
    pub fn sandbox_logs(
        &self,
        sandbox_id: &str,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LogEvent>> {
        self.get(sandbox_id)?;
        self.shared.logs.entries(sandbox_id, cursor, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let (started, id) = decode_token("1700000000000.abc123").unwrap();
        assert_eq!((started, id.as_str()), (1_700_000_000_000, "abc123"));
        for bad in ["", "abc", "x.abc", "12.", "12.A_B", "12.../etc"] {
            assert!(decode_token(bad).is_err(), "{bad:?}");
        }
    }
}
