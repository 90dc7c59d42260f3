"""Trim a TensorRT API surface dump (gen_surface.sh's api-VERSION.json) to what the stand-in reads.

Keeps every class, attribute, kind (method / property (rw) / property (ro) / ...), enum member
and value; from each doc string keeps only the pybind11 signature lines (methods, overloads,
property getters) and value reprs, dropping the prose. Writes JSON with the same schema
(one key per line, sorted, so a regenerated surface diffs readably).

usage: python trim.py IN.json OUT.json
"""

import json
import re
import sys

# "name(a: T, b: U = 0) -> R", "2. name(...) -> R" (an overload), "(arg0: C) -> R" (a getter)
SIGNATURE = re.compile(r"^(\d+\. )?[A-Za-z_]\w*\(.*\)( -> .*)?$|^\(.*\) -> .*$")


def signatures(doc: str) -> str:
    lines = [line.strip() for line in doc.splitlines()]
    return "\n".join(
        line for line in lines if SIGNATURE.match(line) and "(*args, **kwargs)" not in line
    )


def trim_attr(attr: dict) -> dict:
    kind = attr["kind"]
    keep_doc = kind.startswith(("attr:", "value:")) or kind == "nested-class"
    return {"kind": kind, "doc": attr["doc"] if keep_doc else signatures(attr["doc"])}


def trim(data: dict) -> dict:
    return {
        "version": data["version"],
        "module": {name: trim_attr(attr) for name, attr in data["module"].items()},
        "classes": {
            name: {"attrs": {a: trim_attr(x) for a, x in cls["attrs"].items()}, "doc": ""}
            for name, cls in data["classes"].items()
        },
        "enums": {
            name: {"members": e["members"], "values": e["values"], "doc": ""}
            for name, e in data["enums"].items()
        },
    }


if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        trimmed = trim(json.load(f))
    with open(dst, "w") as f:
        json.dump(trimmed, f, indent=0, sort_keys=True)
        f.write("\n")
