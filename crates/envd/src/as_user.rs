//! File-system work done with a user's permissions.
//!
//! envd runs as root; a request that runs as `user` must not read or write what `user` could
//! not. Only opening a file (and creating its directories) checks permissions, so that part
//! runs on a short-lived thread whose credentials are the user's, and the open file is handed
//! back. Linux keeps credentials per thread (the raw system calls, not libc's process-wide
//! wrappers), so the rest of envd keeps root; the thread ends with the work and never needs
//! to switch back.

use std::io;

use rustix::process::{Gid, Uid};

use crate::users::User;

/// Run `work` with `user`'s file-system permissions and return its result.
///
/// When envd is not root, or `user` is root, nothing can or needs to change: `work` runs on
/// the blocking pool as envd.
///
/// # Errors
///
/// What `work` returns, or why the credentials could not be taken.
pub async fn run<T, F>(user: &User, work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    if !needs_switch(user) {
        return tokio::task::spawn_blocking(work)
            .await
            .map_err(io::Error::other)?;
    }
    let credentials = Credentials::of(user);
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("envd-as-user".into())
        .spawn(move || {
            let outcome = credentials.take().and_then(|()| work());
            let _ = done.send(outcome);
        })?;
    result
        .await
        .map_err(|_| io::Error::other("the file worker thread panicked"))?
}

/// [`run`] for synchronous code that lends `work` borrowed state: `work` runs on a scoped
/// thread with `user`'s file-system permissions, and this blocks until it is done. Called
/// on a thread that already is `user` (or from envd when not root), `work` runs right here.
///
/// # Errors
///
/// What `work` returns, or why the credentials could not be taken.
pub fn run_scoped<T: Send>(
    user: &User,
    work: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    if !needs_switch(user) {
        return work();
    }
    let credentials = Credentials::of(user);
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("envd-as-user".into())
            .spawn_scoped(scope, || credentials.take().and_then(|()| work()))?
            .join()
            .map_err(|_| io::Error::other("the file worker thread panicked"))?
    })
}

/// Whether running as `user` takes a change of credentials.
#[must_use]
pub fn needs_switch(user: &User) -> bool {
    rustix::process::geteuid().is_root() && user.uid != 0
}

/// A user's ids, to be taken by a worker thread.
struct Credentials {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

impl Credentials {
    fn of(user: &User) -> Self {
        Self {
            uid: Uid::from_raw(user.uid),
            gid: Gid::from_raw(user.gid),
            groups: std::iter::once(user.gid)
                .chain(user.groups.iter().copied())
                .map(Gid::from_raw)
                .collect(),
        }
    }

    /// Take these ids as this thread's effective (and so file-system) identity. Real and
    /// saved ids stay root's; the thread is dropped after its one job.
    fn take(&self) -> io::Result<()> {
        // Order matters: groups and gid need the privileges that the uid change drops.
        rustix::thread::set_thread_groups(&self.groups)?;
        rustix::thread::set_thread_res_gid(None, Some(self.gid), None)?;
        rustix::thread::set_thread_res_uid(None, Some(self.uid), None)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A user of the given id (and group) with no groups of its own, for tests.
    pub(crate) fn someone(uid: u32) -> User {
        User {
            name: "someone".into(),
            uid,
            gid: uid,
            groups: vec![],
            home: "/".into(),
            shell: "/bin/sh".into(),
        }
    }

    #[tokio::test]
    async fn runs_with_the_users_ids_and_leaves_envd_alone() {
        let before = rustix::process::geteuid();
        let user = someone(65_534);
        let ids = run(&user, || {
            Ok((
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ))
        })
        .await
        .unwrap();
        if needs_switch(&user) {
            assert_eq!(ids, (65_534, 65_534));
        } else {
            assert_eq!(ids.0, before.as_raw());
        }
        assert_eq!(rustix::process::geteuid(), before);
    }

    #[tokio::test]
    async fn a_user_cannot_create_what_it_may_not() {
        let user = someone(65_534);
        if !needs_switch(&user) {
            return; // not root: there is no other identity to take
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        let denied = run(&user, move || std::fs::write(&target, b"x")).await;
        assert_eq!(denied.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        let target = dir.path().join("g");
        run(&someone(0), move || std::fs::write(&target, b"x"))
            .await
            .unwrap();
    }
}
