//! `GET /files`: stream one file to the client, gzip-compressed when it asks for that.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use async_compression::Level;
use async_compression::tokio::bufread::GzipEncoder;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use super::files::{FilesQuery, authorize};
use super::signature::Operation;
use super::{HttpError, lookup_user};
use crate::as_user;
use crate::paths;
use crate::state::Envd;

/// How much of a file is read (and sent) at a time.
pub const CHUNK: usize = 256 * 1024;

/// `GET /files?path=&username=&signature=&signature_expiration=`.
///
/// # Errors
///
/// 400 for a bad query, a directory or a path that is no regular file; 401 for a bad token,
/// signature or user; 403 when the user may not read the file; 404 when it does not exist.
pub async fn get_files(
    State(envd): State<Envd>,
    headers: HeaderMap,
    query: Result<Query<FilesQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(query) = query.map_err(|rejection| HttpError::bad_request(rejection.body_text()))?;
    authorize(&envd, &headers, &query, Operation::Read)?;
    let user = lookup_user(&envd, query.username())?;
    let path = paths::resolve(&user, query.path.as_deref().unwrap_or_default());
    let gzip = wants_gzip(&headers)?;

    let opened = path.clone();
    let file = as_user::run(&user, move || open_for_reading(&opened))
        .await
        .map_err(|error| HttpError::from_io("error opening file", &path, &error))?;
    let meta = file
        .metadata()
        .map_err(|error| HttpError::from_io("error reading file", &path, &error))?;
    if meta.is_dir() {
        return Err(HttpError::bad_request(format!(
            "path '{}' is a directory",
            path.display()
        )));
    }
    if !meta.is_file() {
        let kind = describe(meta.file_type());
        return Err(HttpError::bad_request(format!(
            "path '{}' is not a regular file but {kind}",
            path.display()
        )));
    }

    let file = tokio::fs::File::from_std(file);
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::VARY, "accept-encoding")
        .header(header::CONTENT_DISPOSITION, content_disposition(&path));
    let body = if gzip {
        response = response.header(header::CONTENT_ENCODING, "gzip");
        let source = tokio::io::BufReader::with_capacity(CHUNK, file);
        let encoder = GzipEncoder::with_quality(source, Level::Fastest);
        Body::from_stream(ReaderStream::with_capacity(encoder, CHUNK))
    } else if meta.len() > 0 {
        // What the file holds now; a file that grows meanwhile is cut here, one that shrinks
        // ends the response early (the client sees a short body, not a wrong one). Files in
        // /proc say 0 and are sent to their end.
        response = response.header(header::CONTENT_LENGTH, meta.len());
        Body::from_stream(ReaderStream::with_capacity(file.take(meta.len()), CHUNK))
    } else {
        Body::from_stream(ReaderStream::with_capacity(file, CHUNK))
    };
    response
        .body(body)
        .map_err(|error| HttpError::internal(format!("cannot build the response: {error}")))
}

/// Open `path` for reading; a FIFO must not block the worker (it is refused right after).
fn open_for_reading(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

fn describe(kind: std::fs::FileType) -> &'static str {
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "something else"
    }
}

/// Whether to answer with gzip, from `Accept-Encoding` (the choice E2B's envd makes: the
/// supported coding with the highest quality; identity unless the client refuses it).
///
/// # Errors
///
/// 400 when the client refuses identity and gzip alike.
pub fn wants_gzip(headers: &HeaderMap) -> Result<bool, HttpError> {
    let mut codings: Vec<(String, f32)> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(parse_coding)
        .filter(|(name, _)| !name.is_empty())
        .collect();
    if codings.is_empty() {
        return Ok(false);
    }
    codings.sort_by(|a, b| b.1.total_cmp(&a.1));
    let identity_refused = codings
        .iter()
        .any(|(name, quality)| name == "identity" && *quality == 0.0);
    for (name, quality) in &codings {
        if *quality == 0.0 {
            continue;
        }
        match name.as_str() {
            "identity" => return Ok(false),
            "*" => return Ok(identity_refused),
            "gzip" | "x-gzip" => return Ok(true),
            _ => {}
        }
    }
    if identity_refused {
        Err(HttpError::bad_request(
            "no acceptable encoding found, supported: [gzip]",
        ))
    } else {
        Ok(false)
    }
}

/// `gzip;q=0.5` as `("gzip", 0.5)`; no quality is 1.
fn parse_coding(item: &str) -> (String, f32) {
    let mut parts = item.split(';');
    let name = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let quality = parts
        .filter_map(|param| {
            let (key, value) = param.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("q")
                .then(|| value.trim().parse::<f32>().ok())
                .flatten()
        })
        .next_back()
        .unwrap_or(1.0);
    (name, quality)
}

/// `inline; filename="<name>"`, with an RFC 6266 `filename*` when the name is not plain ASCII.
#[must_use]
pub fn content_disposition(path: &Path) -> HeaderValue {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let plain = name
        .chars()
        .all(|c| c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\');
    let value = if plain {
        format!("inline; filename=\"{name}\"")
    } else {
        let fallback: String = name
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut encoded = String::new();
        for byte in name.bytes() {
            if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
                encoded.push(char::from(byte));
            } else {
                encoded.push_str(&format!("%{byte:02X}"));
            }
        }
        format!("inline; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("inline"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Result<bool, HttpError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
        wants_gzip(&headers)
    }

    #[test]
    fn gzip_only_when_asked_for() {
        assert_eq!(wants_gzip(&HeaderMap::new()), Ok(false));
        assert_eq!(accept("gzip"), Ok(true));
        assert_eq!(accept("gzip, deflate"), Ok(true));
        assert_eq!(accept("zstd,gzip,br"), Ok(true));
        assert_eq!(accept("GZIP;q=0.5, identity;q=0.9"), Ok(false));
        assert_eq!(accept("gzip;q=0"), Ok(false));
        assert_eq!(accept("br, deflate"), Ok(false));
        assert_eq!(accept("identity"), Ok(false));
        assert_eq!(accept("*"), Ok(false));
        assert_eq!(accept("*, identity;q=0"), Ok(true));
        assert!(accept("br, identity;q=0").is_err());
    }

    #[test]
    fn disposition_names_the_file() {
        assert_eq!(
            content_disposition(Path::new("/home/user/a b.txt")),
            "inline; filename=\"a b.txt\""
        );
        assert_eq!(
            content_disposition(Path::new("/tmp/ü\"x")),
            "inline; filename=\"__x\"; filename*=UTF-8''%C3%BC%22x"
        );
    }
}
