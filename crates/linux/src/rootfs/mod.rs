//! Root filesystems: templates (the built-in `base`) and per-sandbox overlays.
