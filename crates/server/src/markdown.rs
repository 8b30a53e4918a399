//! Reports' Markdown as HTML for the dashboard (pulldown-cmark, CommonMark + tables). Raw
//! HTML in the Markdown is escaped, never passed through: report text holds paths and
//! messages that came from images and guests.

use pulldown_cmark::{html, Event, Options, Parser};

/// `markdown` as HTML with any raw HTML escaped.
pub fn to_html(markdown: &str) -> String {
    let parser = Parser::new_ext(markdown, Options::ENABLE_TABLES).map(|e| match e {
        Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
        e => e,
    });
    let mut out = String::new();
    html::push_html(&mut out, parser);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_render_and_raw_html_is_escaped() {
        let h = super::to_html("# Report\n\n| a | b |\n|---|---|\n| 1 | <script>x</script> |\n");
        assert!(h.contains("<h1>Report</h1>"), "{h}");
        assert!(h.contains("<table>"), "{h}");
        assert!(h.contains("&lt;script&gt;"), "{h}");
        assert!(!h.contains("<script>"), "{h}");
    }
}
