//! cgroups: v2 (unified) with a v1 fallback.
