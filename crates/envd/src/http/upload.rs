//! `POST /files`: write files from a `multipart/form-data` or `application/octet-stream`
//! body, optionally gzip-compressed, streaming to disk as the body arrives.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use async_compression::tokio::bufread::GzipDecoder;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio_util::io::{ReaderStream, StreamReader};

use super::download::CHUNK;
use super::files::{FilesQuery, authorize};
use super::signature::Operation;
use super::{HttpError, lookup_user};
use crate::as_user;
use crate::paths;
use crate::state::Envd;
use crate::users::User;

/// An upload whose body sends nothing for this long is given up.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// After a failed upload the rest of the body is read and dropped for at most this long, so
/// the client (still sending) gets the error answer instead of a reset connection.
pub const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Prefix of the request headers that carry file metadata (`X-Metadata-<key>: <value>`).
pub const METADATA_HEADER_PREFIX: &str = "x-metadata-";

/// Bytes gathered before each write to disk.
const WRITE_BUFFER: usize = 1024 * 1024;

/// One written file in the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WrittenFile {
    /// Absolute path.
    pub path: String,
    /// Last component of the path.
    pub name: String,
    /// Always `"file"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The metadata set from `X-Metadata-*` headers, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// `POST /files?path=&username=&signature=&signature_expiration=`.
///
/// # Errors
///
/// 400 for a bad query, body, content type or path; 401 for a bad token, signature or user;
/// 403 when the user may not write there; 408 when the body stalls; 507 when the disk is full.
pub async fn post_files(
    State(envd): State<Envd>,
    headers: HeaderMap,
    query: Result<Query<FilesQuery>, QueryRejection>,
    body: Body,
) -> Result<Json<Vec<WrittenFile>>, HttpError> {
    let mut raw: ByteStream = Box::pin(body.into_data_stream().map_err(io::Error::other));
    let checked = (|| -> Result<_, HttpError> {
        let Query(query) =
            query.map_err(|rejection| HttpError::bad_request(rejection.body_text()))?;
        authorize(&envd, &headers, &query, Operation::Write)?;
        let user = lookup_user(&envd, query.username())?;
        let metadata = metadata_headers(&headers)?;
        let gzip = gzip_content_encoding(&headers)?;
        let kind = BodyKind::of(&headers)?;
        Ok((query, user, metadata, gzip, kind))
    })();
    let (query, user, metadata, gzip, kind) = match checked {
        Ok(checked) => checked,
        Err(error) => {
            drain_stream(&mut raw).await;
            return Err(error);
        }
    };
    let mut stream: ByteStream = if gzip {
        let decoder = GzipDecoder::new(StreamReader::new(raw));
        Box::pin(ReaderStream::with_capacity(decoder, CHUNK))
    } else {
        raw
    };
    let upload = Upload {
        user,
        metadata,
        #[cfg(test)]
        after_copy: None,
    };
    match kind {
        BodyKind::Raw => {
            let result = upload.raw(query.path.as_deref(), &mut stream).await;
            if result.is_err() {
                drain_stream(&mut stream).await;
            }
            result.map(|file| Json(vec![file]))
        }
        BodyKind::Multipart(boundary) => {
            let mut multipart = multer::Multipart::new(stream, boundary);
            let result = upload
                .multipart(query.path.as_deref(), &mut multipart)
                .await;
            if result.is_err() {
                drain_multipart(&mut multipart).await;
            }
            result.map(Json)
        }
    }
}

/// How the body carries its files.
#[derive(Clone, Debug, PartialEq, Eq)]
enum BodyKind {
    /// `application/octet-stream`: the body is the file.
    Raw,
    /// `multipart/*` with this boundary.
    Multipart(String),
}

impl BodyKind {
    fn of(headers: &HeaderMap) -> Result<Self, HttpError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if media == "application/octet-stream" {
            Ok(Self::Raw)
        } else if media.starts_with("multipart/") {
            multer::parse_boundary(content_type)
                .map(Self::Multipart)
                .map_err(|error| {
                    HttpError::bad_request(format!("error parsing multipart form: {error}"))
                })
        } else {
            Err(HttpError::bad_request(format!(
                "unsupported content type: {content_type}, expected multipart/form-data or application/octet-stream"
            )))
        }
    }
}

/// Whether `Content-Encoding` says gzip.
fn gzip_content_encoding(headers: &HeaderMap) -> Result<bool, HttpError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    let coding = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match coding.as_str() {
        "" | "identity" => Ok(false),
        "gzip" | "x-gzip" => Ok(true),
        _ => Err(HttpError::bad_request(format!(
            "unsupported Content-Encoding: {coding}, supported: [gzip]"
        ))),
    }
}

/// The `X-Metadata-<key>: <value>` headers as a map; keys are lowercase (HTTP header names
/// are), an empty key is dropped, the first of repeated headers counts.
///
/// # Errors
///
/// 400 for a value that is not visible ASCII.
pub fn metadata_headers(headers: &HeaderMap) -> Result<BTreeMap<String, String>, HttpError> {
    let mut metadata = BTreeMap::new();
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(METADATA_HEADER_PREFIX) else {
            continue;
        };
        if key.is_empty() || metadata.contains_key(key) {
            continue;
        }
        let value = value.to_str().map_err(|_| {
            HttpError::bad_request(format!(
                "invalid metadata value for key '{key}': values must be printable US-ASCII"
            ))
        })?;
        metadata.insert(key.to_owned(), value.to_owned());
    }
    Ok(metadata)
}

/// The `filename` of a part's `Content-Disposition` as Go's `mime.ParseMediaType` reads it:
/// quoted strings with backslash escapes, and an RFC 5987 `filename*` (UTF-8 or ISO-8859-1,
/// percent-encoded) taking precedence. Nothing is stripped: the name is the full path.
#[must_use]
pub fn disposition_filename(value: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    let mut rest = value.split_once(';')?.1;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            break;
        }
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (raw, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((index, c)) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?.1),
                    '"' => {
                        end = Some(index + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            (out, &quoted[end?..])
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim_end().to_owned(), &after[end..])
        };
        match key.as_str() {
            "filename" => plain = Some(raw),
            "filename*" => extended = decode_extended(&raw),
            _ => {}
        }
        rest = remaining;
    }
    extended.or(plain)
}

/// `UTF-8''%e2%82%ac.txt` (RFC 5987 `ext-value`).
fn decode_extended(value: &str) -> Option<String> {
    let mut parts = value.splitn(3, '\'');
    let charset = parts.next()?.to_ascii_lowercase();
    let _language = parts.next()?;
    let encoded = parts.next()?;
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut iter = encoded.bytes();
    while let Some(byte) = iter.next() {
        if byte == b'%' {
            let high = char::from(iter.next()?).to_digit(16)?;
            let low = char::from(iter.next()?).to_digit(16)?;
            bytes.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            bytes.push(byte);
        }
    }
    match charset.as_str() {
        "utf-8" => String::from_utf8(bytes).ok(),
        "iso-8859-1" | "us-ascii" => Some(bytes.into_iter().map(char::from).collect()),
        _ => None,
    }
}

/// Where a multipart file part goes: the `path` query names the first (and only) file;
/// otherwise the part's filename is the full destination path.
///
/// # Errors
///
/// 400 when there is no path for the part, or `path` would name a second file.
pub fn part_destination(
    query_path: Option<&str>,
    files_before: usize,
    filename: Option<&str>,
) -> Result<String, HttpError> {
    match query_path.filter(|path| !path.is_empty()) {
        Some(path) if files_before == 0 => Ok(path.to_owned()),
        Some(_) => Err(HttpError::bad_request(
            "the path query parameter names a single file, but the request uploads more than one; \
             leave it out and name each file in its part's filename",
        )),
        None => filename
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                HttpError::bad_request(
                    "filename not found in the part's Content-Disposition header",
                )
            }),
    }
}

/// Where the bytes of one file come from.
enum Source<'a> {
    Raw(&'a mut ByteStream),
    Part(&'a mut multer::Field<'static>),
}

impl Source<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        match self {
            Self::Raw(stream) => idle(stream.next())
                .await?
                .transpose()
                .map_err(|error| body_error(&error)),
            Self::Part(field) => idle(field.chunk()).await?.map_err(multipart_error),
        }
    }
}

async fn idle<F: Future>(future: F) -> Result<F::Output, HttpError> {
    tokio::time::timeout(IDLE_TIMEOUT, future)
        .await
        .map_err(|_| {
            HttpError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body sent nothing for {} s",
                    IDLE_TIMEOUT.as_secs()
                ),
            )
        })
}

fn body_error(error: &io::Error) -> HttpError {
    HttpError::bad_request(format!("error reading request body: {error}"))
}

fn multipart_error(error: multer::Error) -> HttpError {
    match error {
        multer::Error::StreamReadFailed(cause) => {
            HttpError::bad_request(format!("error reading request body: {cause}"))
        }
        other => HttpError::bad_request(format!("error reading multipart form: {other}")),
    }
}

/// Read and drop what is left of the body, for at most [`DRAIN_TIME`].
async fn drain_stream(stream: &mut ByteStream) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

async fn drain_multipart(multipart: &mut multer::Multipart<'static>) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Ok(Some(mut field)) = multipart.next_field().await {
            while let Ok(Some(_)) = field.chunk().await {}
        }
    })
    .await;
}

/// One upload request: who writes, and the metadata for every file.
struct Upload {
    user: User,
    metadata: BTreeMap<String, String>,
    /// Tests only: called with the target once its bytes are copied (or failed to), before
    /// the metadata is set or a partial file removed, to swap the path meanwhile.
    #[cfg(test)]
    after_copy: Option<AfterCopy>,
}

/// See [`Upload::after_copy`].
#[cfg(test)]
type AfterCopy = Box<dyn Fn(&Path) + Send + Sync>;

impl Upload {
    async fn raw(
        &self,
        path: Option<&str>,
        stream: &mut ByteStream,
    ) -> Result<WrittenFile, HttpError> {
        let path = path.filter(|path| !path.is_empty()).ok_or_else(|| {
            HttpError::bad_request("path query parameter is required for raw body upload")
        })?;
        let target = paths::resolve(&self.user, path);
        self.write(target, Source::Raw(stream)).await
    }

    async fn multipart(
        &self,
        query_path: Option<&str>,
        multipart: &mut multer::Multipart<'static>,
    ) -> Result<Vec<WrittenFile>, HttpError> {
        let mut written = Vec::new();
        let mut seen = HashSet::new();
        while let Some(mut field) = idle(multipart.next_field())
            .await?
            .map_err(multipart_error)?
        {
            if field.name() != Some("file") {
                continue;
            }
            let filename = field
                .headers()
                .get(header::CONTENT_DISPOSITION)
                .and_then(|value| value.to_str().ok())
                .and_then(disposition_filename);
            let path = part_destination(query_path, written.len(), filename.as_deref())?;
            let target = paths::resolve(&self.user, &path);
            if !seen.insert(target.clone()) {
                return Err(HttpError::bad_request(format!(
                    "you cannot upload multiple files to the same path '{}' in one upload request, \
                     only the first specified file was uploaded",
                    target.display()
                )));
            }
            written.push(self.write(target, Source::Part(&mut field)).await?);
        }
        Ok(written)
    }

    /// Stream `source` into `target` (created or truncated, owned by the user), then set the
    /// metadata. A failed write leaves no partial file.
    ///
    /// Everything envd does as root here goes through the descriptor the user opened
    /// (fchown, fsetxattr), never through the path, which the user may have pointed
    /// elsewhere meanwhile (a symlink to a root-owned file); the partial file is removed as
    /// the user, and only while the path still names it.
    async fn write(
        &self,
        target: PathBuf,
        mut source: Source<'_>,
    ) -> Result<WrittenFile, HttpError> {
        let opened = target.clone();
        let file = as_user::run(&self.user, move || open_for_writing(&opened))
            .await
            .map_err(|error| write_error("error opening file", &target, &error))?;
        // The written file itself, for what follows the copy (which consumes `file`).
        let written = file
            .try_clone()
            .map_err(|error| write_error("error opening file", &target, &error))?;
        if rustix::process::geteuid().is_root() {
            // The user's file even when it existed before and belonged to someone else (the
            // user could write it): what E2B's envd does.
            rustix::fs::fchown(
                &file,
                Some(rustix::process::Uid::from_raw(self.user.uid)),
                Some(rustix::process::Gid::from_raw(self.user.gid)),
            )
            .map_err(|errno| {
                write_error("error changing file ownership", &target, &errno.into())
            })?;
        }
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER, tokio::fs::File::from_std(file));
        let copied: Result<(), HttpError> = async {
            while let Some(chunk) = source.next_chunk().await? {
                writer
                    .write_all(&chunk)
                    .await
                    .map_err(|error| write_error("error writing file", &target, &error))?;
            }
            writer
                .flush()
                .await
                .map_err(|error| write_error("error writing file", &target, &error))
        }
        .await;
        drop(writer);
        #[cfg(test)]
        if let Some(hook) = &self.after_copy {
            hook(&target);
        }
        if let Err(error) = copied {
            let partial = target.clone();
            let removed = as_user::run(&self.user, move || remove_if_same(&partial, &written));
            if let Err(removal) = removed.await {
                tracing::warn!(path = %target.display(), %removal, "cannot remove a partial upload");
            }
            return Err(error);
        }
        for (key, value) in &self.metadata {
            crate::metadata::write_fd(&written, key, value).map_err(|error| {
                write_error(
                    &format!("error setting metadata '{key}' on"),
                    &target,
                    &error,
                )
            })?;
        }
        Ok(WrittenFile {
            path: target.to_string_lossy().into_owned(),
            name: target
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            kind: "file",
            metadata: (!self.metadata.is_empty()).then(|| self.metadata.clone()),
        })
    }
}

/// The answer to a failed write-side file operation.
fn write_error(what: &str, path: &Path, error: &io::Error) -> HttpError {
    match error.kind() {
        io::ErrorKind::NotADirectory | io::ErrorKind::InvalidInput => {
            HttpError::bad_request(format!("{what} '{}': {error}", path.display()))
        }
        _ => HttpError::from_io(what, path, error),
    }
}

/// Remove `path` if it still names the file `opened` (runs as the user): a path swapped
/// meanwhile for another file is left alone.
fn remove_if_same(path: &Path, opened: &File) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let (now, then) = (std::fs::symlink_metadata(path)?, opened.metadata()?);
    if (now.dev(), now.ino()) != (then.dev(), then.ino()) {
        return Err(io::Error::other(
            "the path names another file now; left alone",
        ));
    }
    std::fs::remove_file(path)
}

/// Create `path`'s missing parent directories and open it for writing, truncated (runs as
/// the user, so both follow the user's permissions and the new entries are the user's).
fn open_for_writing(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent() {
        ensure_dirs(parent)?;
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
        Ok(meta) if !meta.is_file() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path exists and is not a regular file",
            ));
        }
        _ => {}
    }
    // O_NONBLOCK: should a FIFO appear here after the check, opening it must not hang.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o666)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path is not a regular file",
        ));
    }
    Ok(file)
}

/// Create every missing directory of `dir` (mode 0755 less the umask).
fn ensure_dirs(dir: &Path) -> io::Result<()> {
    let mut current = PathBuf::new();
    for component in dir.components() {
        current.push(component);
        match std::fs::metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("path is a file: {}", current.display()),
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                match std::fs::DirBuilder::new().mode(0o755).create(&current) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(error) => return Err(error),
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_full_paths() {
        let name = |value| disposition_filename(value);
        assert_eq!(
            name(r#"form-data; name="file"; filename="/tmp/a/b.txt""#).as_deref(),
            Some("/tmp/a/b.txt")
        );
        assert_eq!(
            name(r#"form-data; name="file"; filename="rel/x y.txt""#).as_deref(),
            Some("rel/x y.txt")
        );
        assert_eq!(
            name(r#"form-data; name=file; filename=plain.txt"#).as_deref(),
            Some("plain.txt")
        );
        assert_eq!(
            name(r#"form-data; name="file"; filename="q\"uote\\d""#).as_deref(),
            Some(r#"q"uote\d"#)
        );
        assert_eq!(
            name(r#"form-data; name="file"; filename="a;b=c.txt""#).as_deref(),
            Some("a;b=c.txt")
        );
        assert_eq!(
            name(r#"form-data; name="file"; filename="fallback"; filename*=UTF-8''%E2%82%AC.txt"#)
                .as_deref(),
            Some("€.txt")
        );
        assert_eq!(
            name("form-data; name=\"file\"; filename=\"/tmp/ü\"").as_deref(),
            Some("/tmp/ü")
        );
        assert_eq!(name(r#"form-data; name="file""#), None);
        assert_eq!(
            name(r#"form-data; name="file"; filename="unterminated"#),
            None
        );
        // `name` is not mistaken for `filename` and vice versa.
        assert_eq!(
            name(r#"form-data; filename="f"; name="file""#).as_deref(),
            Some("f")
        );
    }

    #[test]
    fn query_path_wins_for_one_file_only() {
        assert_eq!(part_destination(Some("/q"), 0, Some("/f")).unwrap(), "/q");
        assert_eq!(
            part_destination(Some("/q"), 1, Some("/g"))
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(part_destination(None, 3, Some("/f")).unwrap(), "/f");
        assert_eq!(part_destination(Some(""), 0, Some("/f")).unwrap(), "/f");
        assert!(part_destination(None, 0, None).is_err());
        assert!(part_destination(None, 0, Some("")).is_err());
    }

    #[test]
    fn metadata_from_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-metadata-author", "ada".parse().unwrap());
        headers.append("X-Metadata-Author", "second".parse().unwrap());
        headers.insert("x-metadata-", "dropped".parse().unwrap());
        headers.insert("x-access-token", "t".parse().unwrap());
        let metadata = metadata_headers(&headers).unwrap();
        assert_eq!(
            metadata.into_iter().collect::<Vec<_>>(),
            vec![("author".to_owned(), "ada".to_owned())]
        );
    }

    #[test]
    fn content_types_and_encodings() {
        let with = |name: header::HeaderName, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            headers
        };
        assert_eq!(
            BodyKind::of(&with(header::CONTENT_TYPE, "application/octet-stream")),
            Ok(BodyKind::Raw)
        );
        assert_eq!(
            BodyKind::of(&with(
                header::CONTENT_TYPE,
                "multipart/form-data; boundary=abc"
            )),
            Ok(BodyKind::Multipart("abc".into()))
        );
        assert!(BodyKind::of(&with(header::CONTENT_TYPE, "multipart/form-data")).is_err());
        assert!(BodyKind::of(&with(header::CONTENT_TYPE, "text/plain")).is_err());
        assert!(BodyKind::of(&HeaderMap::new()).is_err());
        assert_eq!(gzip_content_encoding(&HeaderMap::new()), Ok(false));
        assert_eq!(
            gzip_content_encoding(&with(header::CONTENT_ENCODING, "GZIP")),
            Ok(true)
        );
        assert_eq!(
            gzip_content_encoding(&with(header::CONTENT_ENCODING, "identity")),
            Ok(false)
        );
        assert!(gzip_content_encoding(&with(header::CONTENT_ENCODING, "br")).is_err());
    }

    /// The user envd's tests run as: this process's own (so nothing needs to switch).
    fn current_user() -> User {
        User {
            name: "tester".into(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            groups: vec![],
            home: PathBuf::from("/"),
            shell: "/bin/sh".into(),
        }
    }

    /// An upload whose path, once the bytes are copied, is moved to `<target>.moved` and
    /// replaced by a symlink to `victim`.
    fn swapping_upload(victim: PathBuf) -> Upload {
        Upload {
            user: current_user(),
            metadata: BTreeMap::from([("author".to_owned(), "ada".to_owned())]),
            after_copy: Some(Box::new(move |target: &Path| {
                std::fs::rename(target, target.with_extension("moved")).unwrap();
                std::os::unix::fs::symlink(&victim, target).unwrap();
            })),
        }
    }

    fn chunks(items: Vec<io::Result<&'static [u8]>>) -> ByteStream {
        Box::pin(futures::stream::iter(
            items.into_iter().map(|item| item.map(Bytes::from_static)),
        ))
    }

    #[tokio::test]
    async fn metadata_goes_on_the_written_file_even_when_the_path_moved() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "not the upload").unwrap();
        let probe = std::fs::File::open(&victim).unwrap();
        if let Err(error) = crate::metadata::write_fd(&probe, "probe", "1") {
            return firkin_test_support::skip(
                "metadata swap test",
                &format!("no user xattrs here ({error})"),
            );
        }
        let target = dir.path().join("upload.txt");
        let upload = swapping_upload(victim.clone());
        let mut stream = chunks(vec![Ok(b"payload")]);
        upload
            .write(target.clone(), Source::Raw(&mut stream))
            .await
            .unwrap();
        let moved = target.with_extension("moved");
        assert_eq!(std::fs::read_to_string(&moved).unwrap(), "payload");
        assert_eq!(
            crate::metadata::read(&moved).unwrap().get("author"),
            Some(&"ada".to_owned())
        );
        assert_eq!(
            crate::metadata::read(&victim).unwrap().get("author"),
            None,
            "the metadata followed the swapped path to another file"
        );
    }

    #[tokio::test]
    async fn a_failed_upload_removes_its_partial_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "not the upload").unwrap();
        let target = dir.path().join("upload.txt");
        let broken = || chunks(vec![Ok(b"part"), Err(io::Error::other("client went away"))]);

        // The path swapped for a symlink: neither it nor what it points to is removed.
        let mut stream = broken();
        let upload = swapping_upload(victim.clone());
        assert!(
            upload
                .write(target.clone(), Source::Raw(&mut stream))
                .await
                .is_err()
        );
        assert!(victim.exists(), "the swapped path's file was removed");
        assert!(target.is_symlink(), "the swapped-in symlink was removed");

        // Unswapped: the partial file is gone.
        std::fs::remove_file(&target).unwrap();
        let mut stream = broken();
        let upload = Upload {
            after_copy: None,
            ..swapping_upload(victim)
        };
        assert!(
            upload
                .write(target.clone(), Source::Raw(&mut stream))
                .await
                .is_err()
        );
        assert!(!target.exists(), "a partial upload was left behind");
    }

    #[test]
    fn directories_are_created_and_files_refused_as_parents() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b/c.txt");
        drop(open_for_writing(&target).unwrap());
        assert!(dir.path().join("a/b").is_dir());
        let below_file = dir.path().join("a/b/c.txt/d");
        let error = open_for_writing(&below_file).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotADirectory);
        assert_eq!(
            write_error("x", &below_file, &error).status,
            StatusCode::BAD_REQUEST
        );
        let error = open_for_writing(&dir.path().join("a")).unwrap_err();
        assert_eq!(
            write_error("x", dir.path(), &error).status,
            StatusCode::BAD_REQUEST
        );
    }
}
