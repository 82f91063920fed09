// test_openapi.cjs - checks real answers of the server against docs/openapi.yaml.
//
//   node test_openapi.cjs docs/openapi.yaml cases.ndjson
//
// cases.ndjson (written by tests/test_openapi.c) holds one answer per line:
// {"op": "/v1/batches/{id}", "method": "get", "status": 200,
//  "content_type": "...", "headers": {"location": ...}, "body": "..."}.
// Each must be documented (path, method, status, media type), carry the
// headers its response declares, and match its schema (JSON Schema 2020-12,
// checked by Ajv); NDJSON bodies are checked line by line against the media
// type's x-line-schema. Every operation must have been seen answering 2xx.
// Exits 1 with every mismatch listed.
"use strict";
const fs = require("fs");
const yaml = require("js-yaml");
const Ajv2020 = require("ajv/dist/2020").default;
const addFormats = require("ajv-formats");

const [specPath, casesPath] = process.argv.slice(2);
const doc = yaml.load(fs.readFileSync(specPath, "utf8"));
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
ajv.addSchema(doc, "openapi.json");

const esc = (s) => s.replace(/~/g, "~0").replace(/\//g, "~1");
const deref = (o) => {
  while (o && o.$ref) {
    const parts = o.$ref.replace(/^#\//, "").split("/").map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
    o = parts.reduce((a, k) => a[k], doc);
  }
  return o;
};
const validators = new Map();
function validate(pointer, value) {
  let v = validators.get(pointer);
  if (!v) {
    v = ajv.compile({ $ref: "openapi.json#" + pointer });
    validators.set(pointer, v);
  }
  if (v(value)) return null;
  return ajv.errorsText(v.errors, { separator: "; " });
}

const problems = [];
const seen = new Set();
let checked = 0, lines = 0;
for (const line of fs.readFileSync(casesPath, "utf8").split("\n")) {
  if (!line.trim()) continue;
  const c = JSON.parse(line);
  const where = `${c.method.toUpperCase()} ${c.op} -> ${c.status}`;
  const op = doc.paths[c.op] && doc.paths[c.op][c.method];
  if (!op && c.status === 405 && doc.paths[c.op]) {
    // A method the path does not have: the document cannot list it, but the
    // answer must still be the documented error, with Allow.
    const err = validate("/components/schemas/Error", JSON.parse(c.body));
    if (err) problems.push(`${where}: ${err}`);
    if (!("allow" in (c.headers || {}))) problems.push(`${where}: no Allow header`);
    checked++;
    continue;
  }
  if (!op) { problems.push(`${where}: no such operation in the document`); continue; }
  let res = op.responses[String(c.status)] || op.responses.default;
  if (!res) { problems.push(`${where}: status not documented`); continue; }
  const resName = res.$ref || "";
  res = deref(res);
  let base = `/paths/${esc(c.op)}/${c.method}/responses/${String(c.status)}`;
  if (resName) base = resName.replace(/^#/, "");
  for (const h of Object.keys(res.headers || {}))
    if (!(h.toLowerCase() in (c.headers || {}))) problems.push(`${where}: header ${h} is documented but missing`);
  const mt = (c.content_type || "").split(";")[0].trim();
  const media = res.content && res.content[mt];
  if (!media) { problems.push(`${where}: media type "${mt}" not documented`); continue; }
  const mbase = `${base}/content/${esc(mt)}`;
  if (mt === "application/json") {
    let body;
    try { body = JSON.parse(c.body); } catch (e) { problems.push(`${where}: body is not JSON: ${c.body.slice(0, 200)}`); continue; }
    const err = validate(`${mbase}/schema`, body);
    if (err) problems.push(`${where}: ${err}\n    body: ${c.body.slice(0, 400)}`);
  } else if (media["x-line-schema"]) {
    for (const l of c.body.split("\n")) {
      if (!l.trim()) continue;
      lines++;
      const err = validate(`${mbase}/x-line-schema`, JSON.parse(l));
      if (err) problems.push(`${where}: line ${l.slice(0, 300)}: ${err}`);
    }
  }
  checked++;
  if (c.status >= 200 && c.status < 300) seen.add(`${c.method} ${c.op}`);
}
for (const [p, ops] of Object.entries(doc.paths))
  for (const m of Object.keys(ops))
    if (["get", "post", "put", "delete", "patch"].includes(m) && !seen.has(`${m} ${p}`))
      problems.push(`${m.toUpperCase()} ${p}: no 2xx answer was checked`);
if (problems.length) {
  console.log(problems.join("\n"));
  process.exit(1);
}
console.log(`openapi: ${checked} answers (${lines} NDJSON lines) match docs/openapi.yaml; every operation seen`);
