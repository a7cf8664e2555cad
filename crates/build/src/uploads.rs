//! The files of `COPY` steps: uploaded once per (template, files hash) by the SDK's plain
//! `PUT`, kept under the builder's upload directory, visible whole or not at all.

use std::path::PathBuf;

use crate::BuildError;
use crate::engine::Builder;
use crate::spec::is_files_hash;

/// The largest upload a `COPY` may bring.
pub const MAX_UPLOAD_BYTES: u64 = 4 << 30;

impl Builder {
    /// Where the upload `hash` of `template_id` is kept.
    pub(crate) fn upload_path(&self, template_id: &str, hash: &str) -> PathBuf {
        self.uploads.join(template_id).join(hash)
    }

    /// Whether the upload `hash` of `template_id` is here already.
    ///
    /// # Errors
    ///
    /// [`BuildError::BadRequest`] for a hash that is not 64 hex digits,
    /// [`BuildError::NotFound`] for an unknown template.
    pub fn upload_present(&self, template_id: &str, hash: &str) -> Result<bool, BuildError> {
        self.check_upload(template_id, hash)?;
        Ok(self.upload_path(template_id, hash).is_file())
    }

    fn check_upload(&self, template_id: &str, hash: &str) -> Result<(), BuildError> {
        if !is_files_hash(hash) {
            return Err(BuildError::BadRequest(format!(
                "files hash {hash:?} is not 64 lowercase hex digits"
            )));
        }
        if self.templates.catalog.find(template_id)?.is_none() {
            return Err(BuildError::NotFound(format!(
                "template '{template_id}' not found"
            )));
        }
        Ok(())
    }

    /// Keeps `body` as the upload `hash` of `template_id` (at most [`MAX_UPLOAD_BYTES`]);
    /// visible whole or not at all. Returns its size.
    ///
    /// # Errors
    ///
    /// As [`Builder::upload_present`]; [`BuildError::BadRequest`] when it is too large;
    /// [`BuildError::Internal`] when it cannot be written.
    pub async fn save_upload<B>(
        &self,
        template_id: &str,
        hash: &str,
        mut body: B,
    ) -> Result<u64, BuildError>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        use http_body_util::BodyExt as _;
        use tokio::io::AsyncWriteExt as _;
        self.check_upload(template_id, hash)?;
        self.disk_check("template file upload")?;
        let dest = self.upload_path(template_id, hash);
        let dir = dest.parent().unwrap_or(&self.uploads).to_owned();
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            BuildError::Internal(format!("{what} {}: {e}", dest.display()))
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| internal("create the directory of", &e))?;
        let partial = dir.join(format!(".{hash}.partial"));
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| internal("create", &e))?;
        let mut size = 0_u64;
        let written = async {
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| BuildError::BadRequest(format!("the upload: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    size += data.len() as u64;
                    if size > MAX_UPLOAD_BYTES {
                        return Err(BuildError::BadRequest(format!(
                            "the upload is larger than {MAX_UPLOAD_BYTES} bytes"
                        )));
                    }
                    file.write_all(&data)
                        .await
                        .map_err(|e| internal("write", &e))?;
                }
            }
            file.sync_all().await.map_err(|e| internal("sync", &e))?;
            tokio::fs::rename(&partial, &dest)
                .await
                .map_err(|e| internal("keep", &e))
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        written.map(|()| size)
    }
}
