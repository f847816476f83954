"""The service's API reference as one self-contained HTML page, rendered from its OpenAPI schema.

Why not FastAPI's ``/docs``: Swagger UI loads its scripts and styles from a CDN, so the page is blank on
a machine without internet access, and every visit tells a third-party host that the service exists.
This page has no script and links nothing outside the service; the full schema stays at
``/openapi.json`` for any OpenAPI tool.
"""

from __future__ import annotations

import html
import json
from typing import Any, Mapping

STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
         "h2{border-top:1px solid #ddd;padding-top:1rem;font-size:1.1rem}code,pre{background:#f4f4f4;padding:.1rem .3rem}"
         "pre{padding:.6rem;overflow-x:auto}.m{font-weight:bold;margin-right:.5rem}")


def _ref_name(schema: Mapping[str, Any]) -> str:
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref else schema.get("type", "object")


def _schema_block(name: str, components: Mapping[str, Any]) -> str:
    schema = components.get(name)
    if schema is None:
        return ""
    return f"<details><summary>{html.escape(name)}</summary><pre>{html.escape(json.dumps(schema, indent=2))}</pre></details>"


def render_docs(openapi: Mapping[str, Any], openapi_url: str = "/openapi.json") -> str:
    """HTML for every operation of ``openapi``: method, path, summary, parameters, request and response bodies."""
    info = openapi.get("info", {})
    components = openapi.get("components", {}).get("schemas", {})
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(info.get('title', 'API'))}"
             f" API</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(info.get('title', 'API'))} <small>{html.escape(str(info.get('version', '')))}</small></h1>",
             f"<p>{html.escape(info.get('description', ''))}</p>",
             f"<p>The OpenAPI schema: <a href='{html.escape(openapi_url)}'>{html.escape(openapi_url)}</a>.</p>"]
    for path, operations in openapi.get("paths", {}).items():
        for method, op in operations.items():
            parts.append(f"<h2><span class='m'>{html.escape(method.upper())}</span><code>{html.escape(path)}</code></h2>")
            text = op.get("description") or op.get("summary") or ""
            parts.append(f"<p>{html.escape(text)}</p>")
            params = op.get("parameters", [])
            if params:
                rows = "".join(f"<li><code>{html.escape(p['name'])}</code> ({html.escape(p.get('in', ''))})"
                               f"{' required' if p.get('required') else ''}: "
                               f"{html.escape(p.get('description') or p.get('schema', {}).get('description', ''))}</li>"
                               for p in params)
                parts.append(f"<p>Parameters:</p><ul>{rows}</ul>")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                parts.append(f"<p>Body: {_schema_block(_ref_name(body), components) or html.escape(_ref_name(body))}</p>")
            ok = op.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {}).get("schema")
            if ok and _ref_name(ok) in components:
                parts.append(f"<p>Answer: {_schema_block(_ref_name(ok), components)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
