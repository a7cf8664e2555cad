//! The template catalog on a real SQLite file: E2B's naming, tag and build-state rules, logs
//! read from any offset, and what survives reopening.

#[cfg(test)]
mod tests {
    use firkin_image::catalog::{BuildStatus, CatalogError, ImageRecord};
    use firkin_image::{Catalog, Digest, ImageConfig};

    fn image(layer: &[u8]) -> ImageRecord {
        ImageRecord {
            layers: vec![Digest::of(layer)],
            config: ImageConfig {
                env: vec!["LANG=C.UTF-8".into()],
                working_dir: Some("/app".into()),
                user: Some("user".into()),
                ..ImageConfig::default()
            },
            start_cmd: Some("python -m http.server 8000".into()),
            ready_cmd: None,
            user: Some("user".into()),
            workdir: None,
            on_base: false,
        }
    }

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| (*t).to_owned()).collect()
    }

    fn not_found(error: CatalogError) -> String {
        match error {
            CatalogError::NotFound(message) => message,
            other => panic!("not a 404: {other:?}"),
        }
    }

    #[test]
    fn a_build_takes_its_tags_only_once_it_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("templates.db")).unwrap();
        let request = catalog
            .request_build(" My-Tpl:V1 ", &tags(&["stable", "v1"]))
            .unwrap();
        assert_eq!(
            (request.name.as_str(), request.tags.clone()),
            ("my-tpl", tags(&["v1", "stable"]))
        );
        assert_eq!(request.template_id.len(), 20);
        let state = catalog
            .build_state(&request.template_id, &request.build_id, 0, 100)
            .unwrap();
        assert_eq!(state.status, BuildStatus::Waiting);
        assert!(
            not_found(catalog.resolve("my-tpl:v1").unwrap_err())
                .contains("tag 'v1' does not exist")
        );

        catalog
            .start_build(&request.template_id, &request.build_id)
            .unwrap();
        assert!(matches!(
            catalog.start_build(&request.template_id, &request.build_id),
            Err(CatalogError::Conflict(_))
        ));
        catalog
            .finish_build(&request.build_id, Ok(image(b"layer")))
            .unwrap();

        for reference in [
            "my-tpl:v1",
            "MY-TPL:stable",
            &format!("{}:v1", request.template_id),
            &format!("my-tpl:{}", request.build_id),
        ] {
            let resolved = catalog.resolve(reference).unwrap();
            assert_eq!(resolved.build_id, request.build_id, "{reference}");
            assert_eq!(resolved.image, image(b"layer"));
        }
        // Building "name:tag" does not make the default tag, as on E2B.
        assert_eq!(
            not_found(catalog.resolve("my-tpl").unwrap_err()),
            "tag 'default' does not exist for template 'my-tpl'"
        );
        assert_eq!(
            not_found(catalog.resolve("nope").unwrap_err()),
            "template 'nope' not found"
        );
    }

    #[test]
    fn a_failed_build_keeps_its_reason_and_never_takes_a_tag() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("templates.db")).unwrap();
        let first = catalog.request_build("app", &[]).unwrap();
        assert_eq!(first.tags, tags(&["default"]));
        catalog
            .start_build(&first.template_id, &first.build_id)
            .unwrap();
        catalog
            .finish_build(&first.build_id, Ok(image(b"one")))
            .unwrap();

        let second = catalog.request_build("app", &[]).unwrap();
        assert_eq!(
            second.template_id, first.template_id,
            "the same template, a new build"
        );
        catalog
            .start_build(&second.template_id, &second.build_id)
            .unwrap();
        catalog
            .log(&second.build_id, "error", "step 2: exit code 1", Some("2"))
            .unwrap();
        catalog
            .finish_build(&second.build_id, Err("step 2 failed: exit code 1".into()))
            .unwrap();

        let state = catalog
            .build_state(&second.template_id, &second.build_id, 0, 100)
            .unwrap();
        assert_eq!(state.status, BuildStatus::Error);
        assert_eq!(state.reason.as_deref(), Some("step 2 failed: exit code 1"));
        assert_eq!(
            catalog.resolve("app").unwrap().build_id,
            first.build_id,
            "default still the first"
        );
        let listed = catalog.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].latest_build,
            Some((second.build_id.clone(), BuildStatus::Error))
        );
        assert_eq!(listed[0].tags, tags(&["default"]));
    }

    #[test]
    fn logs_are_read_from_any_offset_and_unfinished_builds_fail_on_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("templates.db");
        let catalog = Catalog::open(&path).unwrap();
        let build = catalog.request_build("slow", &[]).unwrap();
        catalog
            .start_build(&build.template_id, &build.build_id)
            .unwrap();
        for i in 0..5 {
            catalog
                .log(&build.build_id, "info", &format!("line {i}"), None)
                .unwrap();
        }
        let page = catalog
            .build_state(&build.template_id, &build.build_id, 2, 2)
            .unwrap();
        let messages: Vec<&str> = page.logs.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(messages, ["line 2", "line 3"]);
        assert!(
            page.logs
                .iter()
                .all(|l| l.level == "info" && l.at_unix_ms > 0)
        );
        assert!(
            catalog
                .build_state(&build.template_id, &build.build_id, 5, 100)
                .unwrap()
                .logs
                .is_empty()
        );
        assert_eq!(
            not_found(
                catalog
                    .build_state(&build.template_id, "no-such-build", 0, 100)
                    .unwrap_err()
            ),
            "Build 'no-such-build' not found"
        );
        drop(catalog);

        let reopened = Catalog::open(&path).unwrap();
        assert_eq!(
            reopened
                .build_state(&build.template_id, &build.build_id, 0, 100)
                .unwrap()
                .status,
            BuildStatus::Building,
            "opening alone fails nothing (the command line opens it beside the daemon)"
        );
        assert_eq!(reopened.fail_interrupted_builds().unwrap(), 1);
        let state = reopened
            .build_state(&build.template_id, &build.build_id, 0, 100)
            .unwrap();
        assert_eq!(state.status, BuildStatus::Error);
        assert_eq!(
            state.reason.as_deref(),
            Some("the daemon stopped during the build")
        );
        assert_eq!(state.logs.len(), 5, "its log survives");
    }

    #[test]
    fn tags_are_assigned_removed_and_listed_and_templates_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("templates.db")).unwrap();
        let build = catalog.request_build("web:v1", &[]).unwrap();
        catalog
            .start_build(&build.template_id, &build.build_id)
            .unwrap();
        catalog
            .finish_build(&build.build_id, Ok(image(b"web")))
            .unwrap();
        let other = catalog.request_build("db", &[]).unwrap();
        catalog
            .start_build(&other.template_id, &other.build_id)
            .unwrap();
        catalog
            .finish_build(&other.build_id, Ok(image(b"db")))
            .unwrap();

        let (assigned, build_id) = catalog
            .assign_tags("web:v1", &tags(&["Prod", "default"]))
            .unwrap();
        assert_eq!(
            (assigned, build_id.clone()),
            (tags(&["prod", "default"]), build.build_id.clone())
        );
        assert_eq!(catalog.resolve("web").unwrap().build_id, build_id);
        assert!(matches!(
            catalog.assign_tags("web:v1", &tags(&[":bad"])),
            Err(CatalogError::BadName(_))
        ));
        assert!(matches!(
            catalog.assign_tags("nope:v1", &tags(&["x"])),
            Err(CatalogError::NotFound(_))
        ));
        let listed: Vec<String> = catalog
            .tags("web")
            .unwrap()
            .into_iter()
            .map(|(t, _, _)| t)
            .collect();
        assert_eq!(listed, tags(&["default", "prod", "v1"]));
        catalog.remove_tags("web", &tags(&["prod"])).unwrap();
        let listed: Vec<String> = catalog
            .tags("web")
            .unwrap()
            .into_iter()
            .map(|(t, _, _)| t)
            .collect();
        assert_eq!(listed, tags(&["default", "v1"]));

        let in_use = catalog.layers_in_use().unwrap();
        assert_eq!(
            in_use,
            [Digest::of(b"web"), Digest::of(b"db")]
                .into_iter()
                .collect()
        );
        assert_eq!(
            catalog.delete("web:whatever").unwrap(),
            build.template_id,
            "the tag is ignored"
        );
        assert!(matches!(
            catalog.resolve("web:v1"),
            Err(CatalogError::NotFound(_))
        ));
        assert_eq!(
            catalog.layers_in_use().unwrap(),
            [Digest::of(b"db")].into_iter().collect()
        );
        assert!(matches!(
            catalog.delete("web"),
            Err(CatalogError::NotFound(_))
        ));
        assert!(matches!(
            catalog.request_build("team/web", &[]),
            Err(CatalogError::BadName(_))
        ));
    }
}
