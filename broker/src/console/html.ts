// The console pages' one escaping helper (docs/console.md "Pages"): every interpolation in an
// html`…` template is escaped, unless it is itself an Html fragment (built by html`…` or marked
// trusted with raw()). Agent-supplied strings — purposes, resources, reasons, comments, arguments —
// are therefore shown, never executed. Bidi controls (right-to-left overrides, isolates, marks) are
// shown as their \u escape, so a purpose cannot reorder what is displayed around it.

/** A fragment of markup that is already safe to emit. */
export class Html {
  readonly value: string;
  constructor(value: string) {
    this.value = value;
  }
  toString(): string {
    return this.value;
  }
}

/** Marks a trusted fragment (our own constants, never data) as markup. */
export const raw = (s: string): Html => new Html(s);

const ENTITIES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
};

/** Unicode bidi controls: embeddings, overrides, isolates, and the implicit marks. */
export const BIDI_CONTROLS = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;

/** Escapes text for an element or a quoted attribute; bidi controls become visible `\uXXXX`. */
export function escapeText(s: string): string {
  return s
    .replace(/[&<>"']/g, (c) => ENTITIES[c] as string)
    .replace(
      BIDI_CONTROLS,
      (c) =>
        `<span class="bidi" title="bidi control">\\u${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}</span>`,
    );
}

/** An attribute value: as text, but a bidi control is written as its escape without markup. */
export function escapeAttr(s: string): string {
  return s
    .replace(/[&<>"']/g, (c) => ENTITIES[c] as string)
    .replace(BIDI_CONTROLS, (c) => `\\u${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`);
}

type Value = Html | string | number | boolean | null | undefined | readonly Value[];

function render(v: Value): string {
  if (v === null || v === undefined || v === false) return '';
  if (v instanceof Html) return v.value;
  if (Array.isArray(v)) return v.map(render).join('');
  return escapeText(String(v));
}

/**
 * The tagged template of every page: `html\`<td>${purpose}</td>\`` escapes `purpose`; arrays are
 * joined; null, undefined and false render as nothing. An interpolation inside an attribute value
 * must be quoted (`href="${url}"`): quotes are escaped, so it cannot leave the attribute.
 */
export function html(strings: TemplateStringsArray, ...values: Value[]): Html {
  let out = strings[0] as string;
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as Value;
    // Inside an attribute (the literal before ends in `="`): no markup, only the escaped text.
    const inAttr = /=\s*"$/.test(out) && typeof v !== 'object';
    out += (inAttr ? escapeAttr(String(v ?? '')) : render(v)) + (strings[i + 1] as string);
  }
  return new Html(out);
}
