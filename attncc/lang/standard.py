"""Expressions that several stages build or recognise: the index variables and the default logits."""
from __future__ import annotations

from .expr import FLOAT, INT, VEC, TExpr

QUERY_INDEX = TExpr("var", (), "i", INT)  # i: the query token
KEY_INDEX = TExpr("var", (), "j", INT)  # j: the key token

# dot(q[i], k[j]) * scale: the logits of plain softmax attention.
DEFAULT_LOGITS = TExpr("mul", (TExpr("dot", (TExpr("qrow", (), "q", VEC), TExpr("krow", (), "k", VEC)), None, FLOAT),
                               TExpr("scale", (), "scale", FLOAT)), None, FLOAT)
