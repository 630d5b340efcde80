"""Does a chat template only copy a message's text into its output? Read off its syntax tree.

Training renders every row twice (the whole conversation, and the prompt before each answer),
and on 100k rows that Jinja work was most of ``data check``'s time. Most chat templates branch
on roles, positions and flags, never on what a message says: for them the render of a
conversation is the render of its *shape* (the roles and other keys, in order) with each
message's text put in where a placeholder came out. ``templates.render`` renders a shape once
with placeholders and fills it in for every conversation of that shape, but only for a template
that ``passes_content_through`` says yes to.

The proof is a flow check over the template's syntax tree. Values are sorted into kinds: the
``messages`` list, one message, a message's ``content``, and plain values (everything else).
A content may be joined to strings (``+``, ``~``), kept in a variable or namespace attribute,
passed through ``string``, ``trim`` or ``tojson``, tested for its type (``is string``, ``is defined``)
or for being empty (``if``, ``and``/``or``/``not``: the shape records which texts are empty), and
written out. Anything else that touches it (a comparison, ``in``, a method such as ``split`` or
``strip``, another filter, a length, an index, printing a whole message, iterating a message) makes
the answer no, and so does any construct not followed here (macros, includes,
filter blocks, ``loop.previtem``/``nextitem``, a time-of-day ``strftime_now``). Then the control
flow and every plain value are the same for the real texts and the placeholders, and the output
differs only where a content was written.

``trim`` and ``tojson`` are the changes a content may go through. ``tojson`` escapes a string
character by character, so ``templates`` fills in the text escaped the same way where the placeholder
came out escaped. ``trim`` is different: ``Verdict.trims`` says it is used, and ``templates`` fills in
only conversations whose texts have no whitespace at their edges (for those, trimming changes nothing).
Other conversations are rendered in full.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from jinja2 import nodes

PLAIN, CONTENT, MESSAGE, MESSAGES, BOTTOM, CONFLICT = "plain", "content", "message", "messages", "bottom", "conflict"
NAMESPACE = "namespace"  # a namespace() with an attribute that holds a text

# Tests whose answer for a string depends only on its being a string.
_TYPE_TESTS = frozenset({
    "defined", "undefined", "none", "string", "mapping", "iterable", "sequence", "number", "integer",
    "float", "boolean", "true", "false", "callable",
})
_DATE_ONLY = re.compile(r"(%-?[dbBmyYaAje]|[^%])*")  # strftime formats that change once a day at most


class Refused(Exception):
    """The template does something with a message's text that is not followed here."""


@dataclass(frozen=True)
class Verdict:
    passes: bool
    trims: bool = False  # a content goes through ``trim`` somewhere
    reason: str = ""  # why not, when it does not


def passes_content_through(tree: nodes.Template) -> Verdict:
    """Whether every message text in ``tree`` only reaches the output unchanged (see module doc)."""
    flow = _Flow(tree)
    try:
        flow.solve()
        for _, source in flow.assignments:  # what each variable is given, now without leniency
            source(flow)
        flow.check(tree.body)
    except Refused as exc:
        return Verdict(False, reason=str(exc))
    except Exception as exc:  # a tree this check does not expect: rendering in full is always right
        return Verdict(False, reason=f"the check could not read the template ({type(exc).__name__}: {exc})")
    return Verdict(True, trims=flow.trims)


def _join(a: str, b: str) -> str:
    if NAMESPACE in (a, b):  # a namespace holding texts is read only through its own name
        return CONFLICT
    if a == b or b == BOTTOM:
        return a
    if a == BOTTOM:
        return b
    if {a, b} == {PLAIN, CONTENT}:
        return CONTENT
    return CONFLICT


class _Flow:
    def __init__(self, tree: nodes.Template):
        self.kinds: dict[str, str] = {}  # assigned variables ("name" or "ns.attr") and their kinds
        self.trims = False
        self.assignments = list(_assignments(tree))

    # -- variables: each one's kind is the join of everything assigned to it, solved to a fixed point
    def solve(self) -> None:
        start = {key: MESSAGES if key == "messages" else BOTTOM for key, _ in self.assignments}  # a global set again
        self.kinds = dict(start)
        for _ in range(32):
            new = dict(start)
            for key, source in self.assignments:
                try:
                    kind = source(self)
                except Refused:
                    kind = BOTTOM  # the strict pass below refuses it with its reason
                new[key] = _join(new[key], kind)
            if new == self.kinds:
                return
            self.kinds = new
        raise Refused("the kinds of the template's variables do not settle")

    # -- statements
    def check(self, body: list[nodes.Node]) -> None:
        for node in body:
            self.statement(node)

    def statement(self, node: nodes.Node) -> None:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if not isinstance(child, nodes.TemplateData) and self.expr(child) not in (PLAIN, CONTENT, BOTTOM):
                    raise Refused(f"line {child.lineno}: writes out a whole message or message list")
        elif isinstance(node, nodes.If):
            self.truth(node.test)
            self.check(node.body)
            for branch in node.elif_:
                self.statement(branch)
            self.check(node.else_)
        elif isinstance(node, nodes.For):
            if node.recursive:
                raise Refused(f"line {node.lineno}: a recursive loop")
            self.iterated(node.iter)
            if node.test is not None:
                self.truth(node.test)
            self.check(node.body)
            self.check(node.else_)
        elif isinstance(node, nodes.Assign):
            self.expr(node.node)
        elif isinstance(node, nodes.AssignBlock):
            if node.filter is not None:
                raise Refused(f"line {node.lineno}: a filtered set block")
            self.check(node.body)
        elif isinstance(node, nodes.CallBlock) and _is_generation(node.call):
            self.check(node.body)
        elif isinstance(node, (nodes.Continue, nodes.Break)):
            return
        else:
            raise Refused(f"line {node.lineno}: {type(node).__name__} is not followed")

    def iterated(self, expr: nodes.Expr) -> str:
        kind = self.expr(expr)
        if kind in (CONTENT, MESSAGE):
            raise Refused(f"line {expr.lineno}: iterates over a message or its text")
        return MESSAGE if kind == MESSAGES else kind

    def truth(self, expr: nodes.Expr) -> None:
        """A value decides a branch by being empty or not: allowed for every kind, since whether each
        message's text is empty is part of the shape (a message is never empty; the list's length is
        the shape)."""
        self.expr(expr)

    def plain(self, expr: nodes.Expr, where: str) -> None:
        if self.expr(expr) not in (PLAIN, BOTTOM):
            raise Refused(f"line {expr.lineno}: a message or its text decides {where}")

    # -- expressions: the kind of value each one gives
    def expr(self, node: nodes.Expr) -> str:  # one branch per node type
        if isinstance(node, (nodes.Const, nodes.TemplateData)):
            return PLAIN
        if isinstance(node, nodes.Name):
            return self.name(node.name, node.lineno)
        if isinstance(node, nodes.Getitem):
            return self.item(node)
        if isinstance(node, nodes.Getattr):
            return self.attribute(node)
        if isinstance(node, (nodes.Add, nodes.Concat)):
            parts = [node.left, node.right] if isinstance(node, nodes.Add) else node.nodes
            kinds = [self.expr(part) for part in parts]
            if any(kind in (MESSAGE, MESSAGES) for kind in kinds) and CONTENT in kinds:
                raise Refused(f"line {node.lineno}: joins a message to a text")
            if CONTENT in kinds:
                return CONTENT
            return self.only_plain(kinds, node)
        if isinstance(node, (nodes.And, nodes.Or)):  # gives one of its operands, chosen by emptiness
            return self.either([node.left, node.right], node)
        if isinstance(node, nodes.Not):
            self.truth(node.node)
            return PLAIN
        if isinstance(node, nodes.CondExpr):
            self.truth(node.test)
            return self.either([node.expr1] + ([node.expr2] if node.expr2 is not None else []), node)
        if isinstance(node, nodes.Filter):
            return self.filtered(node)
        if isinstance(node, nodes.Test):
            return self.tested(node)
        if isinstance(node, nodes.Compare):
            return self.compared(node)
        if isinstance(node, nodes.Call):
            return self.called(node)
        if isinstance(node, (nodes.BinExpr, nodes.UnaryExpr)):
            operands = [node.left, node.right] if isinstance(node, nodes.BinExpr) else [node.node]
            return self.only_plain([self.expr(each) for each in operands], node)
        if isinstance(node, (nodes.List, nodes.Tuple)):
            return self.only_plain([self.expr(each) for each in node.items], node)
        if isinstance(node, nodes.Dict):
            return self.only_plain([self.expr(each) for pair in node.items for each in (pair.key, pair.value)], node)
        if isinstance(node, nodes.Slice):
            parts = [each for each in (node.start, node.stop, node.step) if each is not None]
            return self.only_plain([self.expr(each) for each in parts], node)
        raise Refused(f"line {node.lineno}: {type(node).__name__} is not followed")

    def either(self, options: list[nodes.Expr], node: nodes.Node) -> str:
        kind = BOTTOM
        for each in options:
            kind = _join(kind, self.expr(each))
        if kind in (CONFLICT, NAMESPACE):
            raise Refused(f"line {node.lineno}: {type(node).__name__} mixes messages and other values")
        return kind

    def only_plain(self, kinds: list[str], node: nodes.Node) -> str:
        if any(kind not in (PLAIN, BOTTOM) for kind in kinds):
            raise Refused(f"line {node.lineno}: {type(node).__name__} on a message or its text")
        return PLAIN

    def name(self, name: str, lineno: int) -> str:
        kind = self.kinds.get(name, MESSAGES if name == "messages" else PLAIN)
        if kind == CONFLICT:
            raise Refused(f"line {lineno}: {name} holds messages at one place and other values at another")
        if kind == PLAIN and any(key.startswith(name + ".") and self.kinds[key] != PLAIN for key in self.kinds):
            return NAMESPACE  # only its attributes may be read
        return kind

    def item(self, node: nodes.Getitem) -> str:
        base = self.expr(node.node)
        if base == MESSAGES:
            if isinstance(node.arg, nodes.Slice):
                self.expr(node.arg)
                return MESSAGES
            self.plain(node.arg, "which message is read")
            return MESSAGE
        if base == MESSAGE:
            if not (isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str)):
                raise Refused(f"line {node.lineno}: reads a message by a computed key")
            return CONTENT if node.arg.value == "content" else PLAIN
        if base in (PLAIN, BOTTOM):
            self.plain(node.arg, "an index")
            return base
        raise Refused(f"line {node.lineno}: indexes into a message's text")

    def attribute(self, node: nodes.Getattr) -> str:
        if isinstance(node.node, nodes.Name):
            key = f"{node.node.name}.{node.attr}"
            if key in self.kinds:
                self.name(node.node.name, node.lineno)
                return self.name(key, node.lineno)
            if node.node.name == "loop" and node.attr in ("previtem", "nextitem", "changed", "cycle"):
                raise Refused(f"line {node.lineno}: loop.{node.attr} is not followed")
        base = self.expr(node.node)
        if base == MESSAGE:
            if hasattr(dict, node.attr):  # items, get, values, ...: a method, not a key
                raise Refused(f"line {node.lineno}: calls a message's .{node.attr}")
            return CONTENT if node.attr == "content" else PLAIN
        if base in (PLAIN, BOTTOM, NAMESPACE):
            return PLAIN if base == NAMESPACE else base  # a namespace attribute never given a text
        raise Refused(f"line {node.lineno}: reads .{node.attr} of a message list or text")

    def filtered(self, node: nodes.Filter) -> str:
        if node.node is None:
            raise Refused(f"line {node.lineno}: a filter block")
        self.arguments(node)
        base = self.expr(node.node)
        if base == CONTENT:
            if node.name == "string" and not node.args:
                return CONTENT
            if node.name == "trim" and not node.args and not node.kwargs:
                self.trims = True
                return CONTENT
            if node.name == "tojson" and not node.args and not node.kwargs:
                return CONTENT  # JSON escapes a string character by character: templates.py fills in the escaped text
            raise Refused(f"line {node.lineno}: filters a message's text with {node.name}")
        if base == MESSAGES:
            if node.name in ("length", "count"):
                return PLAIN
            if node.name in ("first", "last"):
                return MESSAGE
            raise Refused(f"line {node.lineno}: filters the messages with {node.name}")
        if base not in (PLAIN, BOTTOM):
            raise Refused(f"line {node.lineno}: filters a message or a namespace holding texts with {node.name}")
        return PLAIN

    def tested(self, node: nodes.Test) -> str:
        self.arguments(node)
        base = self.expr(node.node)
        if base in (PLAIN, BOTTOM):
            return PLAIN
        if node.name in _TYPE_TESTS and not node.args and not node.kwargs:
            return PLAIN  # the real text and the placeholder are both strings
        raise Refused(f"line {node.lineno}: tests a message or its text with {node.name}")

    def compared(self, node: nodes.Compare) -> str:
        left = self.expr(node.expr)
        operands = [(left, node.expr)]
        for operand in node.ops:
            right = self.expr(operand.expr)
            if operand.op in ("in", "notin") and right == MESSAGE and isinstance(operands[-1][1], nodes.Const):
                operands.append((PLAIN, operand.expr))  # a key's presence is part of the shape
                continue
            operands.append((right, operand.expr))
        return self.only_plain([kind for kind, _ in operands], node)

    def called(self, node: nodes.Call) -> str:
        if isinstance(node.node, nodes.Name) and node.node.name == "strftime_now":
            form = node.args[0] if len(node.args) == 1 and not node.kwargs else None
            if not (isinstance(form, nodes.Const) and isinstance(form.value, str) and _DATE_ONLY.fullmatch(form.value)):
                raise Refused(f"line {node.lineno}: strftime_now with a time of day")
        self.arguments(node)
        return self.only_plain([self.expr(node.node)], node)

    def arguments(self, node: nodes.Call | nodes.Filter | nodes.Test) -> None:
        values = [*node.args, *(kw.value for kw in node.kwargs)]
        values += [each for each in (node.dyn_args, node.dyn_kwargs) if each is not None]
        self.only_plain([self.expr(each) for each in values], node)


def _is_generation(call: nodes.Expr) -> bool:
    """transformers' ``{% generation %}`` block (templates.GenerationBlock): renders its body as is."""
    return (
        isinstance(call, nodes.Call)
        and isinstance(call.node, nodes.ExtensionAttribute)
        and call.node.name == "_body"
        and call.node.identifier.endswith("GenerationBlock")
    )


def _assignments(tree: nodes.Template) -> Iterator[tuple[str, object]]:
    """Every (variable, how to compute the kind of what it is given) in the template."""
    for each in tree.find_all((nodes.Assign, nodes.For, nodes.AssignBlock)):
        if isinstance(each, nodes.Assign):
            yield from _targets(each.target, lambda flow, value=each.node: flow.expr(value))
        elif isinstance(each, nodes.For):
            yield from _targets(each.target, lambda flow, value=each.iter: flow.iterated(value))
        else:  # a set block holds rendered text: treat it as a message's text, so its uses stay pass-through
            yield from _targets(each.target, lambda flow: CONTENT)


def _targets(target: nodes.Expr, source) -> Iterator[tuple[str, object]]:
    if isinstance(target, nodes.Name):
        yield target.name, source
    elif isinstance(target, nodes.NSRef):
        yield f"{target.name}.{target.attr}", source
    else:  # unpacking: every name gets a plain value, or the value is refused
        for name in target.find_all(nodes.Name):
            yield name.name, lambda flow, whole=source: _unpacked(flow, whole)


def _unpacked(flow: _Flow, source) -> str:
    kind = source(flow)
    if kind not in (PLAIN, BOTTOM):
        raise Refused("unpacks a message or its text")
    return PLAIN
