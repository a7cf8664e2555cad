//! What one envd knows: its settings (some pushed later through `/init`), the account
//! database, the processes it supervises and the file watchers it keeps.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::filesystem::Watchers;
use crate::process::{OomScoreAdj, Supervisor};
use crate::users::{User, UserDb, UserError};

/// Settings: from the command line, and all but [`Settings::child_oom_score_adj`] changed at
/// run time when the daemon asks (`POST /init`).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Token every request must carry in `X-Access-Token` (none: no check).
    pub access_token: Option<String>,
    /// User for requests that name none.
    pub default_user: String,
    /// Working directory for processes that name none (default: the user's home).
    pub default_workdir: Option<String>,
    /// Environment added to every process.
    pub envs: HashMap<String, String>,
    /// The `oom_score_adj` every process starts with, rather than inheriting envd's (see
    /// `--child-oom-score-adj`).
    pub child_oom_score_adj: OomScoreAdj,
}

/// The shared state of one envd. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Envd {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: RwLock<Settings>,
    users: UserDb,
    processes: Supervisor,
    watchers: Watchers,
}

impl Envd {
    /// An envd with `settings`, reading accounts from `users`.
    #[must_use]
    pub fn new(settings: Settings, users: UserDb) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings: RwLock::new(settings),
                users,
                processes: Supervisor::default(),
                watchers: Watchers::default(),
            }),
        }
    }

    /// A copy of the current settings.
    #[must_use]
    pub fn settings(&self) -> Settings {
        self.inner
            .settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Change the settings.
    pub fn update_settings(&self, change: impl FnOnce(&mut Settings)) {
        change(
            &mut self
                .inner
                .settings
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    /// The account database.
    #[must_use]
    pub fn users(&self) -> &UserDb {
        &self.inner.users
    }

    /// `name`, or the default user when `None`.
    ///
    /// # Errors
    ///
    /// When the user does not exist or the database cannot be read.
    pub fn user(&self, name: Option<&str>) -> Result<User, UserError> {
        match name {
            Some(name) => self.inner.users.lookup(name),
            None => self.inner.users.lookup(&self.settings().default_user),
        }
    }

    /// The process supervisor.
    #[must_use]
    pub fn processes(&self) -> &Supervisor {
        &self.inner.processes
    }

    /// The file watchers.
    #[must_use]
    pub fn watchers(&self) -> &Watchers {
        &self.inner.watchers
    }
}
