//! Reports' Markdown as HTML for the dashboard (pulldown-cmark, CommonMark + tables). Raw
//! HTML in the Markdown is escaped, never passed through, and links and images become their
//! text: report text holds paths and messages that came from images and guests.

use pulldown_cmark::{html, Event, Options, Parser, Tag, TagEnd};

/// `markdown` as HTML with any raw HTML escaped and no links or images.
pub fn to_html(markdown: &str) -> String {
    let parser = Parser::new_ext(markdown, Options::ENABLE_TABLES).filter_map(|e| match e {
        Event::Html(t) | Event::InlineHtml(t) => Some(Event::Text(t)),
        Event::Start(Tag::Link { .. } | Tag::Image { .. })
        | Event::End(TagEnd::Link | TagEnd::Image) => None,
        e => Some(e),
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

    #[test]
    fn links_and_images_keep_only_their_text() {
        let h = super::to_html("see [here](javascript:alert(1)) and ![x](http://evil/a.png)\n");
        assert!(
            !h.contains("href") && !h.contains("<img") && !h.contains("javascript"),
            "{h}"
        );
        assert!(h.contains("see here and x"), "{h}");
    }
}
