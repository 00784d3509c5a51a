// Used by tests/test_e2e.py through tests/browser.py: evaluated in the report page with the
// list of category titles; returns {title: {figure: {path, img: [w, h] or null, text}}}.
async (titles) => {
  // Walks the report like a reader: for every family (a category of the report) and every
  // figure in it, show the figure (eye button) and then its description (info button).
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const until = async (fn, ms = 5000) => {
    for (let t = 0; t < ms; t += 25) { const v = fn(); if (v) return v; await sleep(25); }
    return null;
  };
  const link = (text) => [...document.querySelectorAll("a, li, span, td")].filter((e) => e.textContent.trim() === text).pop();
  const rows = () => [...document.querySelectorAll("tr")].filter((tr) => tr.querySelector('a[iconname="eye"]'));
  const rowOf = (name) => rows().find((tr) => tr.querySelector("td").textContent.trim() === name);
  const open = async (title) => {  // the category's list of figures, from the home page or a breadcrumb
    if (!rows().length) {
      const a = await until(() => link(title));
      if (a) a.click();
    }
    return (await until(() => rows().length)) ? rows().map((tr) => tr.querySelector("td").textContent.trim()) : [];
  };
  const out = {};
  for (const title of titles) {
    const names = await open(title);
    out[title] = {};
    for (const name of names) {
      const path = Object.keys(results).find((p) => categories[title] && Object.values(categories[title]).flat().includes(p) && results[p].labels.figure === name);
      rowOf(name).querySelector('a[iconname="eye"]').click();
      const img = await until(() => [...document.querySelectorAll("img")].find((i) => path && i.src === results[path].data_uri && i.complete && i.naturalWidth > 0));
      out[title][name] = { path: path, img: img ? [img.naturalWidth, img.naturalHeight] : null };
    }
    for (const name of names) {
      await open(title);
      rowOf(name).querySelector('a[iconname="information-circle"]').click();
      const path = out[title][name].path;
      out[title][name].text = (await until(() => { const t = document.body.innerText; return t.includes("Description") || t.includes("DESCRIPTION") ? t : null; })) || "";
      const back = await until(() => link(title));  // the breadcrumb back to the category
      if (back) back.click();
      await until(() => rows().length);
    }
    const home = link("Results");
    if (home) home.click();
    await until(() => !rows().length);
  }
  return out;
}
