//! `POST /init` (the daemon pushes settings into a started or resumed sandbox) and
//! `GET /envs`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::HttpError;
use crate::auth::{ACCESS_TOKEN_HEADER, constant_time_eq};
use crate::state::{Envd, Settings};

/// The body of `POST /init` (every field optional; unknown keys are ignored).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    /// Added to (and replacing same-named) environment variables of every process.
    pub env_vars: Option<HashMap<String, String>>,
    /// The new access token; `""` removes it; absent or `null` keeps the current one.
    pub access_token: Option<String>,
    /// The user for requests that name none (ignored when empty).
    pub default_user: Option<String>,
    /// The working directory for processes that name none (ignored when empty).
    pub default_workdir: Option<String>,
}

/// Whether a request may change settings: always while no token is set; once one is, only
/// with that token, in the `X-Access-Token` header or (as E2B's orchestrator sends it on
/// resume) as the body's `accessToken`. Otherwise anyone reaching envd could take the
/// sandbox over by setting a token of their own.
#[must_use]
pub fn may_init(current: Option<&str>, header: Option<&[u8]>, body_token: Option<&str>) -> bool {
    let Some(current) = current else {
        return true;
    };
    header.is_some_and(|sent| constant_time_eq(sent, current.as_bytes()))
        || body_token.is_some_and(|sent| constant_time_eq(sent.as_bytes(), current.as_bytes()))
}

/// Apply `request` to `settings`.
pub fn apply(settings: &mut Settings, request: InitRequest) {
    if let Some(vars) = request.env_vars {
        settings.envs.extend(vars);
    }
    if let Some(token) = request.access_token {
        settings.access_token = (!token.is_empty()).then_some(token);
    }
    if let Some(user) = request.default_user.filter(|user| !user.is_empty()) {
        settings.default_user = user;
    }
    if let Some(workdir) = request.default_workdir.filter(|dir| !dir.is_empty()) {
        settings.default_workdir = Some(workdir);
    }
}

/// `POST /init`: 204 once applied.
///
/// # Errors
///
/// 400 for a body that is not the JSON object above, 401 when a token is set and the request
/// does not carry it, 413 for a body over [`super::INIT_BODY_LIMIT`].
pub async fn post_init(
    State(envd): State<Envd>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let body =
        body.map_err(|rejection| HttpError::new(rejection.status(), rejection.body_text()))?;
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        InitRequest::default()
    } else {
        serde_json::from_slice::<Option<InitRequest>>(&body)
            .map_err(|error| HttpError::bad_request(format!("invalid JSON body: {error}")))?
            .unwrap_or_default()
    };
    let header_token = headers
        .get(ACCESS_TOKEN_HEADER)
        .map(|value| value.as_bytes());
    let mut allowed = false;
    // Checked and applied under one lock, so two racing requests cannot both pass on the
    // strength of a token the other is replacing.
    envd.update_settings(|settings| {
        allowed = may_init(
            settings.access_token.as_deref(),
            header_token,
            request.access_token.as_deref(),
        );
        if allowed {
            apply(settings, request);
        }
    });
    if !allowed {
        return Err(HttpError::unauthorized(
            "access token validation failed: an access token is set; send it in X-Access-Token",
        ));
    }
    Ok((
        StatusCode::NO_CONTENT,
        [(header::CACHE_CONTROL, "no-store")],
    )
        .into_response())
}

/// `GET /envs`: the environment variables set through `/init` (the token middleware guards
/// it).
pub async fn get_envs(State(envd): State<Envd>) -> Json<HashMap<String, String>> {
    Json(envd.settings().envs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::OomScoreAdj;

    #[test]
    fn the_first_token_is_free_later_ones_need_it() {
        assert!(may_init(None, None, Some("new")));
        assert!(!may_init(Some("T"), None, Some("new")));
        assert!(!may_init(Some("T"), None, None));
        assert!(!may_init(Some("T"), Some(b"wrong"), Some("new")));
        assert!(may_init(Some("T"), Some(b"T"), Some("new")));
        assert!(may_init(Some("T"), None, Some("T")));
    }

    #[test]
    fn apply_merges() {
        let mut settings = Settings {
            access_token: Some("T".into()),
            default_user: "user".into(),
            default_workdir: None,
            envs: HashMap::from([("A".into(), "1".into()), ("B".into(), "2".into())]),
            child_oom_score_adj: OomScoreAdj::new(500).unwrap(),
        };
        let request: InitRequest = serde_json::from_str(
            r#"{"envVars": {"B": "3", "C": "4"}, "defaultUser": "", "defaultWorkdir": "/w",
                "hyperloopIP": "10.0.0.1", "timestamp": "2024-01-01T00:00:00Z", "other": 1}"#,
        )
        .unwrap();
        apply(&mut settings, request);
        assert_eq!(settings.envs.len(), 3);
        assert_eq!(settings.envs["B"], "3");
        assert_eq!(settings.default_user, "user");
        assert_eq!(settings.default_workdir.as_deref(), Some("/w"));
        assert_eq!(settings.access_token.as_deref(), Some("T"));
        // Not the daemon's to change: envd's command line set it.
        assert_eq!(settings.child_oom_score_adj.get(), 500);
        apply(
            &mut settings,
            InitRequest {
                access_token: Some(String::new()),
                ..InitRequest::default()
            },
        );
        assert_eq!(settings.access_token, None);
    }
}
