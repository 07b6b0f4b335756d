// A small, safe Markdown renderer: the text is HTML-escaped first, so nothing the model writes becomes markup
// except what the rules below produce (code blocks, inline code, bold, italic, links, lists, headings, quotes).
"use strict";

(function (global) {
  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
  }

  function safeUrl(url) {
    // `url` is already escaped; only web, mail and in-page links survive.
    return /^(https?:\/\/|mailto:|\/|#)/i.test(url) ? url : null;
  }

  function inline(text) {
    const codes = [];
    let out = text.replace(/`([^`\n]+)`/g, (_, code) => {
      codes.push("<code>" + code + "</code>");
      return "\u0000" + (codes.length - 1) + "\u0000";
    });
    out = out.replace(/\[([^\]\n]+)\]\(([^)\s]+)\)/g, (whole, label, url) => {
      const href = safeUrl(url);
      return href ? '<a href="' + href + '" target="_blank" rel="noopener noreferrer">' + label + "</a>" : whole;
    });
    out = out.replace(/(^|[\s(])(https?:\/\/[^\s<]+[^\s<.,;:!?)])/g,
      (_, lead, url) => lead + '<a href="' + url + '" target="_blank" rel="noopener noreferrer">' + url + "</a>");
    out = out.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>").replace(/__([^_\n]+)__/g, "<strong>$1</strong>");
    out = out.replace(/(^|[^*\w])\*([^*\s][^*\n]*?)\*(?!\w)/g, "$1<em>$2</em>");
    out = out.replace(/(^|[^_\w])_([^_\s][^_\n]*?)_(?!\w)/g, "$1<em>$2</em>");
    out = out.replace(/~~([^~\n]+)~~/g, "<del>$1</del>");
    return out.replace(/\u0000(\d+)\u0000/g, (_, n) => codes[Number(n)]);
  }

  const LIST_ITEM = /^(\s*)([-*+]|\d+[.)])\s+(.*)$/;

  function renderMarkdown(source) {
    const lines = escapeHtml(source || "").replace(/\r\n?/g, "\n").split("\n");
    const html = [];
    let paragraph = [];
    const flush = () => {
      if (paragraph.length) html.push("<p>" + paragraph.map(inline).join("<br>") + "</p>");
      paragraph = [];
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = line.match(/^\s*(```|~~~)\s*([\w+.#-]*)\s*$/);
      if (fence) {
        flush();
        const code = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(fence[1])) code.push(lines[i++]);
        const lang = fence[2] ? ' data-lang="' + fence[2] + '"' : "";
        html.push('<pre class="code"' + lang + "><code>" + code.join("\n") + "</code></pre>");
        continue;
      }
      if (!line.trim()) { flush(); continue; }
      const heading = line.match(/^(#{1,6})\s+(.*)$/);
      if (heading) {
        flush();
        const level = Math.min(heading[1].length + 2, 6);
        html.push("<h" + level + ">" + inline(heading[2]) + "</h" + level + ">");
        continue;
      }
      if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) { flush(); html.push("<hr>"); continue; }
      if (/^&gt;\s?/.test(line)) {
        flush();
        const quote = [];
        while (i < lines.length && /^&gt;\s?/.test(lines[i])) quote.push(lines[i++].replace(/^&gt;\s?/, ""));
        i--;
        html.push("<blockquote>" + renderMarkdownEscaped(quote) + "</blockquote>");
        continue;
      }
      if (LIST_ITEM.test(line)) {
        flush();
        const ordered = /^\s*\d/.test(line);
        const items = [];
        while (i < lines.length) {
          const m = lines[i].match(LIST_ITEM);
          if (m) items.push(inline(m[3]));
          else if (lines[i].trim() && /^\s{2,}/.test(lines[i]) && items.length) items[items.length - 1] += "<br>" + inline(lines[i].trim());
          else break;
          i++;
        }
        i--;
        const tag = ordered ? "ol" : "ul";
        html.push("<" + tag + ">" + items.map((t) => "<li>" + t + "</li>").join("") + "</" + tag + ">");
        continue;
      }
      paragraph.push(line);
    }
    flush();
    return html.join("");
  }

  function renderMarkdownEscaped(lines) {
    // Lines that are already escaped (a quote's content): unescape once so renderMarkdown escapes them again.
    const text = lines.join("\n").replace(/&(amp|lt|gt|quot|#39);/g,
      (_, e) => ({ amp: "&", lt: "<", gt: ">", quot: '"', "#39": "'" })[e]);
    return renderMarkdown(text);
  }

  global.renderMarkdown = renderMarkdown;
  global.escapeHtml = escapeHtml;
})(window);
