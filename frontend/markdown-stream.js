// @ts-check
// Incremental markdown for the viewer (app.js): an answer grows by a few characters per
// event, and parsing the whole of it again for every frame costs more the longer it gets.
// A MarkdownStream keeps the HTML of the blocks no later text can change and parses only
// the text after them (in practice the last, still-growing block or two).
//
// A block is final once a blank line separates it from a following block whose first
// line is complete: markdown decides where a block ends from the lines right after it,
// and those are then written (the complete first line matters: `1. a`, a blank line and
// `2` is a paragraph `2` that becomes the list's second item once `. b` arrives). The
// text after such a boundary lexes exactly as it does inside the whole text, and marked's
// parser renders top-level blocks one by one, so the HTML kept plus the HTML of the rest
// is exactly `marked.parse(text)`.
//
// Reference link definitions (`[x]: url`) apply to the whole document: with one, the
// stream parses the whole text every time, like marked.parse. Raw HTML does not change
// where blocks end, but its tags may span blocks once the browser parses the HTML (an
// unclosed <b> continues into the next paragraph): `rawHtml` tells the caller to parse
// the HTML of the whole text at once rather than block by block. Text that does not
// continue the previous one starts over (`reset`). No DOM here: importable in Node.

/**
 * @typedef {import('./vendor/marked.esm.js').Marked} Marked
 * @typedef {import('./vendor/marked.esm.js').Token} Token
 * @typedef {{reset: boolean, done: string, rest: string}} MarkdownUpdate
 *   `reset`: drop all HTML shown so far; `done`: HTML of blocks that became final
 *   (append it and keep it); `rest`: HTML of everything after them (replaces the
 *   previous `rest`). The HTML of the text is always the kept `done`s plus `rest`.
 */

/**
 * Whether the line before `pos` (a line start in `text`) is blank.
 * @param {string} text
 * @param {number} pos
 */
function blankLineBefore(text, pos) {
  if (pos < 2 || text[pos - 1] !== '\n') return false;
  let i = pos - 2;
  while (i >= 0 && (text[i] === ' ' || text[i] === '\t')) i -= 1;
  return i >= 0 && text[i] === '\n';
}

export class MarkdownStream {
  /** @param {Marked} marked the instance (and options) `marked.parse` would use */
  constructor(marked) {
    this._marked = marked;
    this._src = ''; // the text of the last update
    this._doneLen = 0; // length of its prefix whose HTML is final
    this._whole = false; // render the whole text each time (see the top of this file)
    /** The text has raw HTML (see the top of this file). */
    this.rawHtml = false;
  }

  /**
   * Render `text`, usually the previous text plus what was appended since.
   * @param {string} text
   * @returns {MarkdownUpdate}
   */
  update(text) {
    let reset = false;
    if (!text.startsWith(this._src)) {
      this._doneLen = 0;
      this._whole = false;
      this.rawHtml = false;
      reset = true;
    }
    this._src = text;
    if (this._whole) return { reset: true, done: '', rest: this._parse(text) };
    const tail = text.slice(this._doneLen);
    const tokens = this._marked.lexer(tail);
    if (Object.keys(tokens.links).length) {
      const whole = this._doneLen === 0 ? this._marked.parser(tokens) : this._parse(text);
      this._whole = true;
      this._doneLen = 0;
      return { reset: true, done: '', rest: whole };
    }
    if (!this.rawHtml) {
      this._marked.walkTokens(tokens, (t) => { if (t.type === 'html') this.rawHtml = true; });
    }
    // The last boundary: a block after a blank line, with its first line complete.
    let cut = 0;
    let cutPos = 0;
    let pos = 0;
    for (let i = 0; i < tokens.length; i++) {
      if (i > 0 && tokens[i].type !== 'space' && tokens[i - 1].type === 'space'
          && blankLineBefore(tail, pos) && tail.indexOf('\n', pos) !== -1) {
        cut = i;
        cutPos = pos;
      }
      pos += tokens[i].raw.length;
    }
    // Positions come from the tokens' `raw`, which the lexer sometimes rewrites (\r\n,
    // trailing blanks): cut only where the tokens before are exactly the text before.
    if (cut && tokens.slice(0, cut).map((t) => t.raw).join('') !== tail.slice(0, cutPos)) cut = 0;
    if (!cut) return { reset, done: '', rest: this._marked.parser(tokens) };
    this._doneLen += cutPos;
    return {
      reset,
      done: this._marked.parser(tokens.slice(0, cut)),
      rest: this._marked.parser(tokens.slice(cut)),
    };
  }

  /** @param {string} text */
  _parse(text) {
    return this._marked.parser(this._marked.lexer(text));
  }
}
