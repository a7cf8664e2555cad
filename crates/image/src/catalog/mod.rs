//! The template catalog: E2B's model of templates, builds and tags, in SQLite
//! (`<state>/templates.db`).
//!
//! - A **template** has an id (20 characters `[a-z0-9]`) and a name (its alias).
//! - A **build** of it goes `waiting` (requested) → `building` (started) → `ready` or `error`,
//!   keeps its log lines (read back from any offset), and, when ready, the image it made
//!   ([`ImageRecord`]: layer digests in the [`crate::LayerStore`], config, start and ready
//!   commands).
//! - A **tag** points at a build; a build takes the tags it was requested with only when it
//!   becomes ready, so a failed build never takes a tag. `Sandbox.create("name:tag")` resolves
//!   through the tag (default `default`), or a build id in its place.
//!
//! A build that was `waiting` or `building` when the daemon stopped is marked `error` when the
//! daemon starts again ([`Catalog::fail_interrupted_builds`]): nothing will finish it.
//!
//! The build cache maps a step's key (its parent, the step, its files) to the layer it made,
//! so that an unchanged step of a rebuild is not run again.

mod ids;
mod name;
mod records;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::Digest;
use ids::{now_ms, random_id, random_uuid};
pub use name::{BadName, DEFAULT_TAG, TemplateName, parse_tag};
pub use records::{
    BuildRequest, BuildState, BuildStatus, CatalogError, ImageRecord, LogEntry, ResolvedTemplate,
    TemplateSummary,
};

type Result<T> = std::result::Result<T, CatalogError>;

/// The catalog (see the module docs).
#[derive(Debug)]
pub struct Catalog {
    db: Mutex<Connection>,
}

// `synchronous = NORMAL`: in WAL mode a commit survives a crash of the daemon, and only a
// power loss may take the last ones; a build logs a line per step, and a sync per line made an
// all-cached rebuild take 200 ms.
const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS templates (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS builds (
    id TEXT PRIMARY KEY, template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
    status TEXT NOT NULL, tags TEXT NOT NULL, image TEXT, reason TEXT,
    created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tags (
    template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE, tag TEXT NOT NULL,
    build_id TEXT NOT NULL REFERENCES builds(id) ON DELETE CASCADE, created_at INTEGER NOT NULL,
    PRIMARY KEY (template_id, tag));
CREATE TABLE IF NOT EXISTS build_logs (
    build_id TEXT NOT NULL REFERENCES builds(id) ON DELETE CASCADE, seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, step TEXT,
    PRIMARY KEY (build_id, seq));
CREATE TABLE IF NOT EXISTS step_cache (
    key TEXT PRIMARY KEY, layer TEXT NOT NULL, created_at INTEGER NOT NULL);
";

impl Catalog {
    /// Opens (creating) the catalog at `path`.
    ///
    /// # Errors
    ///
    /// The database cannot be opened or written.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Connection::open(path)?;
        db.execute_batch(SCHEMA)?;
        // The daemon and the command line may use the catalog at once.
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Self { db: Mutex::new(db) })
    }

    /// Marks failed every build still `waiting` or `building`: what a daemon that stopped
    /// left unfinished. Only a starting daemon calls this (a command-line pull beside a
    /// running daemon must not fail the daemon's builds); returns how many.
    ///
    /// # Errors
    ///
    /// The database failed.
    pub fn fail_interrupted_builds(&self) -> Result<usize> {
        Ok(self.db().execute(
            "UPDATE builds SET status = 'error', reason = 'the daemon stopped during the build'
             WHERE status IN ('waiting', 'building')",
            [],
        )?)
    }

    /// The layer the step with cache key `key` made, if a build remembered one.
    ///
    /// # Errors
    ///
    /// The database failed, or the stored digest is unreadable.
    pub fn cached_step(&self, key: &str) -> Result<Option<Digest>> {
        let layer: Option<String> = self
            .db()
            .query_row("SELECT layer FROM step_cache WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(layer.and_then(|layer| layer.parse().ok()))
    }

    /// Remembers that the step with cache key `key` made `layer`.
    ///
    /// # Errors
    ///
    /// The database failed.
    pub fn remember_step(&self, key: &str, layer: &Digest) -> Result<()> {
        self.db().execute(
            "INSERT OR REPLACE INTO step_cache (key, layer, created_at) VALUES (?1, ?2, ?3)",
            params![key, layer.to_string(), now_ms()],
        )?;
        Ok(())
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Requests a build of the template `name` (`name[:tag]`), which takes the name's tag and
    /// `extra_tags` (or `default` when there are none) once it is ready. A template of that
    /// name gets a new build; otherwise the template is created.
    ///
    /// # Errors
    ///
    /// [`CatalogError::BadName`] for a bad name or tag.
    pub fn request_build(&self, name: &str, extra_tags: &[String]) -> Result<BuildRequest> {
        let parsed = TemplateName::parse(name)?;
        let mut tags: Vec<String> = parsed.tag.iter().cloned().collect();
        for tag in extra_tags {
            let tag = parse_tag(tag)?;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        if tags.is_empty() {
            tags.push(DEFAULT_TAG.to_owned());
        }
        let mut db = self.db();
        let tx = db.transaction()?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT id FROM templates WHERE name = ?1",
                [&parsed.identifier],
                |r| r.get(0),
            )
            .optional()?;
        let template_id = match existing {
            Some(id) => id,
            None => {
                let id = random_id();
                tx.execute(
                    "INSERT INTO templates (id, name, created_at) VALUES (?1, ?2, ?3)",
                    params![id, parsed.identifier, now_ms() / 1000],
                )?;
                id
            }
        };
        let build_id = random_uuid();
        tx.execute(
            "INSERT INTO builds (id, template_id, status, tags, created_at) VALUES (?1, ?2, 'waiting', ?3, ?4)",
            params![build_id, template_id, serde_json::to_string(&tags)?, now_ms()],
        )?;
        tx.commit()?;
        Ok(BuildRequest {
            template_id,
            build_id,
            name: parsed.identifier,
            tags,
        })
    }

    /// Starts the waiting build `build_id` of `template_id`.
    ///
    /// # Errors
    ///
    /// [`CatalogError::NotFound`], or [`CatalogError::Conflict`] when it is not waiting.
    pub fn start_build(&self, template_id: &str, build_id: &str) -> Result<()> {
        let status = self.status_of(template_id, build_id)?;
        if status != BuildStatus::Waiting {
            return Err(CatalogError::Conflict(
                "build is not in waiting state".to_owned(),
            ));
        }
        self.db().execute(
            "UPDATE builds SET status = 'building' WHERE id = ?1",
            [build_id],
        )?;
        Ok(())
    }

    /// Appends a line to a build's log.
    ///
    /// # Errors
    ///
    /// The database failed.
    pub fn log(
        &self,
        build_id: &str,
        level: &str,
        message: &str,
        step: Option<&str>,
    ) -> Result<()> {
        self.db().execute(
            "INSERT INTO build_logs (build_id, seq, at_ms, level, message, step)
             VALUES (?1, (SELECT COUNT(*) FROM build_logs WHERE build_id = ?1), ?2, ?3, ?4, ?5)",
            params![build_id, now_ms(), level, message, step],
        )?;
        Ok(())
    }

    /// Ends a build: ready with the image it made (it then takes its tags), or failed.
    ///
    /// # Errors
    ///
    /// The database failed.
    pub fn finish_build(
        &self,
        build_id: &str,
        outcome: std::result::Result<ImageRecord, String>,
    ) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        match outcome {
            Ok(image) => {
                tx.execute(
                    "UPDATE builds SET status = 'ready', image = ?2 WHERE id = ?1",
                    params![build_id, serde_json::to_string(&image)?],
                )?;
                let (template_id, tags): (String, String) = tx.query_row(
                    "SELECT template_id, tags FROM builds WHERE id = ?1",
                    [build_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                for tag in serde_json::from_str::<Vec<String>>(&tags)? {
                    tx.execute(
                        "INSERT OR REPLACE INTO tags (template_id, tag, build_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![template_id, tag, build_id, now_ms()],
                    )?;
                }
            }
            Err(reason) => {
                tx.execute(
                    "UPDATE builds SET status = 'error', reason = ?2 WHERE id = ?1",
                    params![build_id, reason],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A build's state and at most `limit` log lines from `logs_offset`.
    ///
    /// # Errors
    ///
    /// [`CatalogError::NotFound`] ("Build '<id>' not found").
    pub fn build_state(
        &self,
        template_id: &str,
        build_id: &str,
        logs_offset: usize,
        limit: usize,
    ) -> Result<BuildState> {
        let status = self.status_of(template_id, build_id)?;
        let db = self.db();
        let reason: Option<String> =
            db.query_row("SELECT reason FROM builds WHERE id = ?1", [build_id], |r| {
                r.get(0)
            })?;
        let mut query = db.prepare(
            "SELECT at_ms, level, message, step FROM build_logs WHERE build_id = ?1
             ORDER BY seq LIMIT ?2 OFFSET ?3",
        )?;
        let logs = query
            .query_map(params![build_id, limit as i64, logs_offset as i64], |r| {
                Ok(LogEntry {
                    at_unix_ms: r.get(0)?,
                    level: r.get(1)?,
                    message: r.get(2)?,
                    step: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(BuildState {
            status,
            logs,
            reason,
        })
    }

    fn status_of(&self, template_id: &str, build_id: &str) -> Result<BuildStatus> {
        self.db()
            .query_row(
                "SELECT status FROM builds WHERE id = ?1 AND template_id = ?2",
                [build_id, template_id],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(|s| BuildStatus::parse(&s))
            .ok_or_else(|| CatalogError::NotFound(format!("Build '{build_id}' not found")))
    }

    /// The ready build `reference` (`name[:tag]`, `id[:tag]`, or a build id in the tag's
    /// place) names.
    ///
    /// # Errors
    ///
    /// [`CatalogError::NotFound`] with E2B's messages (`template '<x>' not found`, `tag '<t>'
    /// does not exist for template '<x>'`), or a bad name.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedTemplate> {
        let parsed = parse_reference(reference)?;
        let (template_id, name) = self.template(&parsed.identifier)?;
        let tag = parsed.tag.as_deref().unwrap_or(DEFAULT_TAG);
        let db = self.db();
        let by_tag = "SELECT b.id, b.image FROM tags t JOIN builds b ON b.id = t.build_id
                      WHERE t.template_id = ?1 AND t.tag = ?2 AND b.status = 'ready'";
        let by_build =
            "SELECT id, image FROM builds WHERE template_id = ?1 AND id = ?2 AND status = 'ready'";
        let query = if name::is_uuid(tag) { by_build } else { by_tag };
        let found: Option<(String, String)> = db
            .query_row(query, [&template_id, tag], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (build_id, image) = found.ok_or_else(|| {
            CatalogError::NotFound(format!(
                "tag '{tag}' does not exist for template '{}'",
                parsed.identifier
            ))
        })?;
        Ok(ResolvedTemplate {
            template_id,
            name,
            build_id,
            image: serde_json::from_str(&image)?,
        })
    }

    /// The id of the template `reference` names by its name or its id (a tag in it is
    /// ignored, as E2B's delete ignores it); `None` for no such template or a malformed name.
    ///
    /// # Errors
    ///
    /// The database failed.
    pub fn find(&self, reference: &str) -> Result<Option<String>> {
        let Ok(parsed) = parse_reference(reference) else {
            return Ok(None);
        };
        match self.template(&parsed.identifier) {
            Ok((id, _)) => Ok(Some(id)),
            Err(CatalogError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// (id, name) of the template named, or with the id, `identifier`.
    fn template(&self, identifier: &str) -> Result<(String, String)> {
        self.db()
            .query_row(
                "SELECT id, name FROM templates WHERE name = ?1 OR id = ?1 ORDER BY name = ?1 DESC LIMIT 1",
                [identifier],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or_else(|| CatalogError::NotFound(format!("template '{identifier}' not found")))
    }

    /// Points `tags` at the build `target` (`name:tag`) resolves to; returns the tags and the
    /// build.
    ///
    /// # Errors
    ///
    /// A bad tag, or [`CatalogError::NotFound`].
    pub fn assign_tags(&self, target: &str, tags: &[String]) -> Result<(Vec<String>, String)> {
        let tags = tags
            .iter()
            .map(|t| parse_tag(t))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let resolved = self.resolve(target)?;
        let db = self.db();
        for tag in &tags {
            db.execute(
                "INSERT OR REPLACE INTO tags (template_id, tag, build_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![resolved.template_id, tag, resolved.build_id, now_ms()],
            )?;
        }
        Ok((tags, resolved.build_id))
    }

    /// Removes `tags` from the template `name`.
    ///
    /// # Errors
    ///
    /// [`CatalogError::NotFound`] for an unknown template.
    pub fn remove_tags(&self, name: &str, tags: &[String]) -> Result<()> {
        let (template_id, _) = self.template(&parse_reference(name)?.identifier)?;
        let db = self.db();
        for tag in tags {
            db.execute(
                "DELETE FROM tags WHERE template_id = ?1 AND tag = ?2",
                params![template_id, tag],
            )?;
        }
        Ok(())
    }

    /// The tags of the template `name`: (tag, build id, assigned at in Unix ms).
    ///
    /// # Errors
    ///
    /// [`CatalogError::NotFound`] for an unknown template.
    pub fn tags(&self, name: &str) -> Result<Vec<(String, String, i64)>> {
        let (template_id, _) = self.template(&parse_reference(name)?.identifier)?;
        let db = self.db();
        let mut query = db.prepare(
            "SELECT tag, build_id, created_at FROM tags WHERE template_id = ?1 ORDER BY tag",
        )?;
        let tags = query
            .query_map([template_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(tags)
    }

    /// Deletes the template `name` (its builds, tags and logs; a tag in the name is ignored,
    /// as E2B does). The caller checks that no sandbox uses it. Returns its id.
    ///
    /// # Errors
    ///
    /// [`CatalogError::NotFound`] for an unknown template.
    pub fn delete(&self, name: &str) -> Result<String> {
        let (template_id, _) = self.template(&parse_reference(name)?.identifier)?;
        self.db()
            .execute("DELETE FROM templates WHERE id = ?1", [&template_id])?;
        Ok(template_id)
    }

    /// Every template, newest first.
    ///
    /// # Errors
    ///
    /// The database failed.
    pub fn list(&self) -> Result<Vec<TemplateSummary>> {
        let db = self.db();
        let mut query = db.prepare(
            "SELECT t.id, t.name, t.created_at,
                    (SELECT id FROM builds WHERE template_id = t.id ORDER BY created_at DESC, rowid DESC LIMIT 1),
                    (SELECT status FROM builds WHERE template_id = t.id ORDER BY created_at DESC, rowid DESC LIMIT 1),
                    (SELECT group_concat(tag, ' ') FROM (SELECT tag FROM tags WHERE template_id = t.id ORDER BY tag))
             FROM templates t ORDER BY t.created_at DESC, t.rowid DESC",
        )?;
        let templates = query
            .query_map([], |r| {
                let build: Option<String> = r.get(3)?;
                let status: Option<String> = r.get(4)?;
                let tags: Option<String> = r.get(5)?;
                Ok(TemplateSummary {
                    template_id: r.get(0)?,
                    name: r.get(1)?,
                    created_at: r.get(2)?,
                    latest_build: build.zip(status).map(|(b, s)| (b, BuildStatus::parse(&s))),
                    tags: tags
                        .map(|t| t.split(' ').map(str::to_owned).collect())
                        .unwrap_or_default(),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(templates)
    }

    /// The layers some ready build uses: what a prune of the layer store must keep. (The
    /// build cache does not keep a layer: a pruned one is built again.)
    ///
    /// # Errors
    ///
    /// The database failed, or a record is unreadable.
    pub fn layers_in_use(&self) -> Result<HashSet<Digest>> {
        let db = self.db();
        let mut query = db.prepare("SELECT image FROM builds WHERE image IS NOT NULL")?;
        let images: Vec<String> = query
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut layers = HashSet::new();
        for image in images {
            layers.extend(serde_json::from_str::<ImageRecord>(&image)?.layers);
        }
        Ok(layers)
    }
}

/// A reference as `resolve` reads it: a name's rules, but a build id may stand for the tag.
fn parse_reference(reference: &str) -> std::result::Result<TemplateName, BadName> {
    let trimmed = reference.trim().to_lowercase();
    if let Some((identifier, tag)) = trimmed.split_once(':')
        && name::is_uuid(tag)
    {
        let mut parsed = TemplateName::parse(identifier)?;
        parsed.tag = Some(tag.to_owned());
        return Ok(parsed);
    }
    TemplateName::parse(&trimmed)
}
