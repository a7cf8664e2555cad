//! Command lines the builder writes for `/bin/bash -l -c`.

/// `text` as one shell word, whatever it holds.
pub(crate) fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_word_stays_one_word() {
        assert_eq!(quote("/app"), "'/app'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
