"""Rendering chat templates with llama.cpp's own engine, the way llama-server (and so Ollama) does.

Python Jinja2 is not evidence of what llama-server sends to the model: llama.cpp has its own
Jinja engine (``common/jinja/``) and, around it, ``common_chat_templates_apply`` adds what the
server adds. llama-cpp-python exposes neither, and its wheel ships ``libllama`` and ``libggml``
but not ``libllama-common``, where they live. So quicktune compiles that code itself: the
``common/`` sources of the llama.cpp that the installed llama-cpp-python vendors (from its sdist,
:func:`quicktune.llamacpp.llama_cpp_source`), plus a small driver shipped with the package
(``llama_render.cpp``), linked to the wheel's own ``libllama``/``libggml`` (the GGUF is read by
the same library that serves ``quicktune chat``). One build, about 2.5 CPU-minutes, into
quicktune's cache, keyed by the llama-cpp-python version and the driver's source.

What the driver passes, as llama-server does for ``/v1/chat/completions`` when Ollama calls it
(no ``--chat-template``, no ``chat_template_kwargs`` unless the request sets ``think``):

* the GGUF's own ``tokenizer.chat_template``, BOS/EOS texts and ``add_bos`` (vocabulary loaded
  only), ``add_generation_prompt`` true, ``reasoning_format`` deepseek, ``enable_thinking`` on
  when the template supports it;
* llama.cpp itself adds ``date_string``/``datetime`` (today's date: Llama 3.x's system header
  then says today, where training rendered its default "26 Jul 2024"), folds a system message
  into the first user turn for templates that refuse a system role, and drops the template's
  leading BOS text when the vocabulary adds BOS as a token. :func:`LlamaRendering.served` puts
  that BOS back, so the text compares with the training render (which tokenizes the template's
  BOS text).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path

from quicktune.data.tokenizer import cache_dir
from quicktune.errors import QuicktuneError
from quicktune.llamacpp import llama_cpp_source

DRIVER = "llama_render.cpp"
LIBRARIES = ("llama", "ggml", "ggml-base")  # from the llama-cpp-python wheel
# The part of llama.cpp's libllama-common that common_chat_templates_apply reaches (chat.cpp
# calls into common.cpp, which needs sampling/speculative/fit to link); paths under common/.
COMMON_SOURCES = (
    "chat.cpp", "chat-auto-parser-generator.cpp", "chat-auto-parser-helpers.cpp", "chat-diff-analyzer.cpp",
    "chat-peg-parser.cpp", "peg-parser.cpp", "json.cpp", "json-schema.cpp", "json-schema-to-grammar.cpp",
    "unicode.cpp", "log.cpp", "common.cpp", "trie.cpp", "sampling.cpp", "reasoning-budget.cpp",
    "speculative.cpp", "ngram-cache.cpp", "ngram-map.cpp", "ngram-mod.cpp", "fit.cpp", "jinja/*.cpp", "parsers/*.cpp",
)


class CheckerUnavailable(QuicktuneError):
    """The checker cannot be built here; the check is reported as skipped with this reason."""


@dataclass
class LlamaRendering:
    prompts: list[str | None]  # the text llama-server tokenizes; None where the template raised
    errors: list[str | None]
    add_bos: bool
    bos: str
    enable_thinking: bool

    def served(self, index: int) -> str | None:
        """The prompt as the model sees it, as text: BOS (added as a token) + the rendered text."""
        prompt = self.prompts[index]
        if prompt is None:
            return None
        return (self.bos if self.add_bos else "") + prompt


def _driver_source() -> str:
    return resources.files("quicktune.export").joinpath(DRIVER).read_text(encoding="utf-8")


def _wheel_libraries() -> dict[str, Path]:
    """llama-cpp-python's shared libraries, by name, without importing (and loading) it."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise CheckerUnavailable("llama-cpp-python is not installed")
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    found = {}
    for name in LIBRARIES:
        matches = sorted(lib.glob(f"lib{name}.so*"), key=lambda p: len(p.name))
        if not matches:
            raise CheckerUnavailable(f"llama-cpp-python's {lib} has no lib{name}.so")
        found[name] = matches[0]
    return found


def _release() -> str:
    try:
        return dist_version("llama-cpp-python")
    except PackageNotFoundError:
        raise CheckerUnavailable("llama-cpp-python is not installed") from None


def _binary_path(cache_root: Path) -> Path:
    # Keyed by the libraries it links to as well: a checker built against another environment's
    # llama-cpp-python (a removed virtualenv) cannot load.
    libraries = "|".join(str(path) for path in sorted(_wheel_libraries().values()))
    digest = hashlib.sha256((_driver_source() + libraries).encode()).hexdigest()[:12]
    return cache_root / "llama-render" / f"llama-cpp-python-{_release()}-{digest}" / "llama_render"


def checker_status(cache_root: Path | None = None) -> tuple[str, str]:
    """("ok" | "fail", detail) without building or downloading anything (for doctor)."""
    try:
        binary = _binary_path(cache_root or cache_dir())
        libraries = _wheel_libraries()
    except CheckerUnavailable as exc:
        return "fail", f"unavailable: {exc}"
    if binary.is_file():
        return "ok", f"built: {binary}"
    if shutil.which("g++") is None:
        return "fail", "unavailable: g++ is not installed (the checker is compiled on first use)"
    cached = (cache_root or cache_dir()) / f"llama-cpp-python-{_release()}-src" / ".complete"  # llama_cpp_source's
    sources = os.environ.get("QUICKTUNE_LLAMA_SRC") or (
        "cached" if cached.is_file() else "fetched from PyPI on first use (the llama-cpp-python sdist)"
    )
    return "ok", f"g++ found, llama.cpp sources {sources}; built on first use, linked to {libraries['llama'].parent}"


def build_checker(source: Path | None = None, cache_root: Path | None = None) -> Path:
    """The compiled checker, built the first time. ``source``: llama.cpp's tree (else fetched)."""
    binary = _binary_path(cache_root or cache_dir())
    if binary.is_file():
        return binary
    compiler = shutil.which("g++")
    if compiler is None:
        raise CheckerUnavailable("g++ is not installed (apt-get install g++)")
    libraries = _wheel_libraries()
    if source is None:
        try:
            source = llama_cpp_source(cache_root or cache_dir())
        except QuicktuneError as exc:
            raise CheckerUnavailable(f"no llama.cpp sources: {exc}") from None
    common = source / "common"
    if not (common / "chat.cpp").is_file() or not (source / "vendor" / "nlohmann" / "json.hpp").is_file():
        raise CheckerUnavailable(f"{source} lacks llama.cpp's common/ or vendor/nlohmann/ sources")
    flags = ["-std=c++17", "-O1", *(f"-I{source / part}" for part in ("common", "include", "ggml/include", "vendor"))]
    # Kept per llama.cpp version: a build stopped half-way resumes, a new driver only relinks.
    objects = binary.parent.parent / f"objects-llama-cpp-python-{_release()}"
    compiled = _compile_chat_code(compiler, flags, common, objects)
    _link_checker(compiler, flags, compiled, libraries, binary)
    return binary


def _compile_chat_code(compiler: str, flags: list[str], common: Path, objects: Path) -> list[Path]:
    """Compiles llama.cpp's chat-template code (``COMMON_SOURCES`` under ``common``, and a generated
    build-info.cpp) into ``objects``, in parallel; an object file already there is kept. Returns the
    object files, in link order."""
    objects.mkdir(parents=True, exist_ok=True)
    # build-info.cpp is generated by llama.cpp's CMake; its values are only printed by llama.cpp's tools.
    info = (common / "build-info.cpp.in").read_text(encoding="utf-8")
    for key, value in (("LLAMA_BUILD_NUMBER", "0"), ("LLAMA_BUILD_COMMIT", "unknown"),
                       ("BUILD_COMPILER", "g++"), ("BUILD_TARGET", "quicktune")):
        info = info.replace(f"@{key}@", value)
    (objects / "build-info.cpp").write_text(info, encoding="utf-8")
    units = [path for pattern in COMMON_SOURCES for path in sorted(common.glob(pattern))]
    jobs = [(unit, objects / (unit.relative_to(common).as_posix().replace("/", "-") + ".o")) for unit in units]
    jobs.append((objects / "build-info.cpp", objects / "build-info.o"))

    def compile_unit(job: tuple[Path, Path]) -> str:
        unit, obj = job
        if obj.is_file():
            return ""
        partial = obj.with_name(f".{obj.name}.{os.getpid()}.partial")
        done = subprocess.run([compiler, *flags, "-c", str(unit), "-o", str(partial)], capture_output=True, text=True)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            return f"{unit.name}: {done.stderr.strip()[-400:]}"
        os.replace(partial, obj)
        return ""

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        errors = [error for error in pool.map(compile_unit, jobs) if error]
    if errors:
        raise CheckerUnavailable(f"llama.cpp's chat code did not compile: {errors[0]}")
    return [obj for _, obj in jobs]


def _link_checker(compiler: str, flags: list[str], compiled: list[Path], libraries: dict[str, Path],
                  binary: Path) -> None:
    """Links the driver (``DRIVER``) with ``compiled`` and the wheel's llama.cpp ``libraries`` into
    ``binary``: under a temporary name, made executable, then renamed, so it is whole or not there."""
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f".{binary.name}.{os.getpid()}.partial")
    try:
        with resources.as_file(resources.files("quicktune.export").joinpath(DRIVER)) as driver:
            command = [compiler, *flags, "-o", str(partial), str(driver), *(str(obj) for obj in compiled)]
            command += [*map(str, libraries.values()), f"-Wl,-rpath,{libraries['llama'].parent}"]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-6:])
            raise CheckerUnavailable(f"the llama.cpp template checker did not link:\n{tail}")
        partial.chmod(0o755)
        os.replace(partial, binary)
    finally:
        partial.unlink(missing_ok=True)


def llama_render(
    conversations: list[list[dict[str, str]]],
    *,
    gguf: Path | None = None,
    template: str | None = None,
    bos: str = "",
    eos: str = "",
    add_bos: bool = False,
    add_eos: bool = False,
    checker: Path | None = None,
) -> LlamaRendering:
    """Render each conversation with llama.cpp's engine, with a generation prompt.

    ``gguf``: take the template, BOS/EOS and add_bos from the file (what llama-server does);
    otherwise ``template`` with the given tokens (a template without its model).
    ``checker``: a built checker (default: :func:`build_checker`'s).
    """
    binary = checker or build_checker()
    request = {"conversations": conversations}
    if gguf is not None:
        request["gguf"] = str(gguf)
    else:
        request.update(template=template or "", bos=bos, eos=eos, add_bos=add_bos, add_eos=add_eos)
    done = subprocess.run(
        [str(binary)], input=json.dumps(request), capture_output=True, text=True, timeout=300
    )
    if done.returncode == 3:  # llama-server would not start: no conversation gets a prompt
        lines = done.stderr.strip().splitlines()  # llama.cpp may log warnings before the driver's reason
        why = next((line for line in lines if line.startswith("llama-server would not start")),
                   lines[-1] if lines else "no reason given")
        return LlamaRendering([None] * len(conversations), [why] * len(conversations), add_bos, bos, False)
    if done.returncode != 0:
        raise QuicktuneError(f"llama.cpp's template engine failed: {done.stderr.strip()[-500:]}")
    out = json.loads(done.stdout)
    return LlamaRendering(
        prompts=[r.get("prompt") for r in out["results"]],
        errors=[r.get("error") for r in out["results"]],
        add_bos=bool(out["add_bos"]),
        bos=out["bos"],
        enable_thinking=bool(out["enable_thinking"]),
    )


def first_difference(served: str, trained: str) -> str:
    at = next((i for i, (a, b) in enumerate(zip(served, trained)) if a != b), min(len(served), len(trained)))
    return f"at character {at}: llama.cpp {served[at:at + 40]!r}, training {trained[at:at + 40]!r}"


def jinja_parity(rendering: LlamaRendering, expected: list[str]) -> str:
    """'n/m conversations' that llama.cpp renders as training did, with the first difference."""
    same, notes = 0, []
    for index, want in enumerate(expected):
        got = rendering.served(index)
        if got == want:
            same += 1
        elif not notes:
            why = f"raised {rendering.errors[index]}" if got is None else first_difference(got, want)
            notes.append(f"conversation {index + 1} {why}")
    return f"{same}/{len(expected)} conversations" + (f" ({notes[0]})" if notes else "")
