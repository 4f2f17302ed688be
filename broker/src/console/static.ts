// The console's two static files (docs/console.md "Pages"), kept as strings so they ship with the
// compiled package: one small ES module (no framework, no build step) and the style sheet. The CSP
// allows scripts and styles from 'self' only, so neither may ever be inlined into a page.

/**
 * Progressive enhancement: pages work without it. With it, a page marked `data-live` follows
 * /console/api/events and, on a decision or approval event, fetches itself again and swaps its
 * <main> (the server's escaped markup, parsed inert by DOMParser: nothing in it runs).
 */
export const CONSOLE_JS = `const main = document.querySelector('main');
if (main && document.body.dataset.live === '1' && 'EventSource' in window) {
  let timer = null;
  const refresh = async () => {
    timer = null;
    if (document.activeElement && main.contains(document.activeElement) && document.activeElement.matches('input,textarea,select')) return;
    const res = await fetch(location.href, { credentials: 'same-origin', headers: { accept: 'text/html' } });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), 'text/html');
    const next = doc.querySelector('main');
    if (next) main.replaceChildren(...Array.from(next.childNodes, (n) => document.importNode(n, true)));
    document.body.dataset.refreshed = String(Date.now());
  };
  const soon = () => { if (!timer) timer = setTimeout(refresh, 500); };
  const events = new EventSource('/console/api/events');
  events.addEventListener('decision', soon);
  events.addEventListener('approval', soon);
  events.addEventListener('open', () => { document.body.dataset.events = 'open'; });
}
for (const form of document.querySelectorAll('form[data-confirm]')) {
  form.addEventListener('submit', (e) => { if (!window.confirm(form.dataset.confirm)) e.preventDefault(); });
}
`;

export const CONSOLE_CSS = `:root { font-family: system-ui, sans-serif; color: #1d232a; background: #f7f8fa; }
body { margin: 0; }
header { display: flex; gap: 1.5rem; align-items: center; padding: .6rem 1.2rem; background: #1d2f4f; color: #fff; }
header a { color: #dfe8ff; text-decoration: none; }
header a[aria-current] { color: #fff; font-weight: 600; border-bottom: 2px solid #fff; }
header .who { margin-left: auto; }
header form { display: inline; }
main { padding: 1rem 1.2rem; max-width: 1600px; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
td.allowed, td.live { color: #17692c; } td.denied, td.revoked { color: #a4161a; font-weight: 600; } td.expired { color: #6b7280; }
.cards { display: flex; flex-wrap: wrap; gap: 1rem; }
.card { background: #fff; border: 1px solid #e3e6ea; border-radius: 6px; padding: .7rem 1rem; min-width: 10rem; }
.card .n { font-size: 1.8rem; font-weight: 600; }
.bidi { background: #ffe08a; color: #6b4500; font-family: monospace; border-radius: 3px; padding: 0 2px; }
.error { background: #fde2e2; border: 1px solid #a4161a; padding: .7rem 1rem; }
.ok { background: #e1f5e6; border: 1px solid #17692c; padding: .7rem 1rem; }
pre { background: #fff; border: 1px solid #e3e6ea; padding: .5rem; white-space: pre-wrap; word-break: break-all; }
svg.chart rect { fill: #3a6ea5; } svg.chart rect.denied { fill: #a4161a; } svg.chart line.axis { stroke: #9ca3af; }
figure.chart { margin: 0; } figure.chart svg { background: #fff; border: 1px solid #e3e6ea; } figcaption { color: #4b5563; font-size: .85rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1.2rem; background: #fff; border: 1px solid #e3e6ea; padding: .7rem 1rem; }
dt { font-weight: 600; color: #4b5563; } dd { margin: 0; }
label { display: inline-block; margin: .2rem .8rem .2rem 0; }
textarea { width: 100%; min-height: 6rem; font-family: monospace; }
`;
