"""Generate the demo dataset: calendar sentences -> one line of JSON.

The task: the user writes one free-text sentence about an appointment ("lunch with
Priya at Café Rouge on Friday at 1pm"); the assistant answers with exactly one line
of JSON with the keys title, person, place, day, time, in that order, null for what
the sentence does not say. Prompted with the system prompt alone, SmolLM2-135M-Instruct
answered none of the 60 eval rows in that shape; a few minutes of LoRA on these rows
teaches it (README.md beside this file has the numbers).

Everything here is deterministic (one seeded ``random.Random``, no clock, no
environment, no set iteration), so ``python -m quicktune.demo.generate`` rewrites
the shipped ``train.jsonl`` and ``eval.jsonl`` byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from quicktune.data import quality

SEED = 4242
TRAIN_ROWS = 400
EVAL_ROWS = 60
MAX_SIMILARITY = 0.7  # reject a sentence whose char-5-gram Jaccard with an accepted one is >= this
KEYS = ("title", "person", "place", "day", "time")

SYSTEM = (
    "Turn the user's sentence into one line of JSON with the keys title, person, place, day, time, "
    "in that order. day is today, tomorrow, a weekday or a date like March 14; time is 24-hour HH:MM. "
    "Use null for anything the sentence does not say."
)

# ----------------------------------------------------------------------------- pools
# Activities: title as it appears in the answer, article used in running text, the
# hours it plausibly starts at, and the kind of place it happens in.
ACTIVITIES = [
    ("breakfast", "", (7, 10), "food"), ("brunch", "", (10, 13), "food"), ("lunch", "", (11, 14), "food"),
    ("dinner", "", (18, 21), "food"), ("tasting menu", "a", (18, 21), "food"), ("coffee", "", (8, 17), "cafe"),
    ("drinks", "", (17, 21), "bar"), ("dentist appointment", "a", (8, 17), "dental"),
    ("eye exam", "an", (8, 17), "medical"), ("checkup", "a", (8, 17), "medical"),
    ("blood test", "a", (7, 11), "medical"), ("physio session", "a", (8, 19), "medical"),
    ("vet appointment", "a", (8, 18), "vet"), ("haircut", "a", (9, 19), "salon"),
    ("piano lesson", "a", (14, 20), "music"), ("guitar lesson", "a", (14, 20), "music"),
    ("pottery class", "a", (10, 20), "arts"), ("photo shoot", "a", (9, 18), "arts"),
    ("yoga class", "a", (7, 20), "fitness"), ("spin class", "a", (7, 20), "fitness"),
    ("climbing session", "a", (9, 21), "fitness"), ("tennis match", "a", (8, 20), "court"),
    ("squash game", "a", (8, 21), "court"), ("swim", "a", (7, 20), "pool"), ("run", "a", (7, 19), "outdoor"),
    ("job interview", "a", (9, 17), "office"), ("project review", "a", (9, 17), "office"),
    ("budget meeting", "a", (9, 17), "office"), ("one-on-one", "a", (9, 17), "office"),
    ("code review", "a", (9, 17), "office"), ("client call", "a", (8, 18), "office"),
    ("book club", "", (18, 21), "hall"), ("study session", "a", (9, 21), "hall"),
    ("birthday party", "a", (12, 21), "hall"), ("board game night", "a", (18, 21), "hall"),
    ("chess match", "a", (10, 20), "hall"), ("movie night", "a", (18, 21), "hall"),
]

FIRST_NAMES = [
    "Priya", "Tomás", "Aisha", "Kenji", "Olga", "Marcus", "Zoë", "Ibrahim", "Sofia", "Dmitri",
    "Nia", "Henrik", "Mei", "Carlos", "Fatima", "Liam", "Yuki", "Amara", "Jonas", "Leila",
    "Ravi", "Chloé", "Samuel", "Ingrid", "Kwame", "Ana", "Björn", "Hana", "Diego", "Grace",
    "Arjun", "Renée", "Felix", "Noor", "Mateo", "Elif", "Oscar", "Wanjiru", "Pavel", "Lucia",
    "Tariq", "Freya", "Hiroshi", "Camila", "Emeka", "Astrid", "Rohan", "Isabel", "Yusuf", "Maren",
    "Jae-won", "Beatriz", "Owen", "Sana", "Luca", "Thandiwe", "Nikolai", "Aylin", "Declan", "Mira",
]
LAST_NAMES = [
    "Natarajan", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Haddad", "Kowalski", "Ferreira", "Nguyen",
    "Schmidt", "Adeyemi", "Castillo", "Ivanova", "O'Brien", "Mensah", "Rossi", "Kaur", "Yilmaz",
    "Fischer", "Alvarez", "Sato", "Petrov", "Mwangi", "Dubois", "Chen", "Novak", "Osei", "Larsen",
    "Kim", "Gallagher", "Bianchi", "Rahman", "Sørensen", "Costa", "Abara", "Hoffmann", "Silva",
    "Park", "Brennan", "Nakamura", "Eriksen", "Quispe", "Varga", "Mahlangu", "Duarte", "Holm",
    "Farouk", "Weber", "Jovanović", "Achebe",
]
HONORIFICS = ["Dr.", "Ms.", "Mr.", "Prof."]

PLACE_PREFIXES = [
    "Maple", "Harbor", "Copper", "Juniper", "Lotus", "Granite", "Willow", "Saffron", "Bluebird",
    "Northgate", "Elm Street", "Kestrel", "Marigold", "Old Mill", "Lighthouse", "Riverside",
    "Cedar", "Amber", "Foxglove", "Hillcrest", "Brookside", "Silver Birch", "Quayside", "Larkspur",
    "Redwood", "Tamarind", "Orchard", "Canal Street", "Blackthorn", "Sunflower", "Westbrook",
    "Magnolia", "Ironworks", "Seabright", "Chestnut", "Meadowlark",
]
PLACE_KINDS = {
    "food": ["Bistro", "Diner", "Kitchen", "Noodle Bar", "Brasserie", "Trattoria"],
    "cafe": ["Café", "Coffee House", "Bakery", "Tea Room"],
    "bar": ["Tavern", "Wine Bar", "Taproom", "Cocktail Lounge"],
    "dental": ["Dental Studio", "Dental Clinic", "Dental Care"],
    "medical": ["Clinic", "Medical Centre", "Health Practice", "Eye Care"],
    "vet": ["Vets", "Animal Clinic", "Pet Hospital"],
    "salon": ["Salon", "Barbers", "Hair Studio"],
    "music": ["Music School", "Piano Studio", "Music Academy"],
    "arts": ["Arts Centre", "Studio", "Workshop", "Gallery"],
    "fitness": ["Gym", "Yoga Studio", "Fitness Club", "Climbing Wall"],
    "court": ["Tennis Club", "Sports Club", "Racquet Club"],
    "pool": ["Leisure Centre", "Lido", "Aquatic Centre"],
    "outdoor": ["Park", "Common", "Trailhead"],
    "office": ["Office", "Co-working Space", "Conference Centre", "Business Park"],
    "hall": ["Library", "Community Hall", "Social Club", "Book Lounge"],
}

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]

# ----------------------------------------------------------------------------- templates
# Each template is text with optional segments in [brackets]; a segment appears only when
# every field named inside it is present. Fields: {title} bare, {a_title} with article,
# {Title}/{A_title} capitalised, {person}, {place}, {day} ("on Friday"), {day_bare} ("Friday"),
# {Day} (capitalised day phrase), {time} ("at 1pm"), {time_bare} ("1pm").
TEMPLATES = [
    "{A_title}[ with {person}][ at {place}][ {day}][ {time}]",
    "Remind me that I have {a_title}[ with {person}][ {day}][ {time}][ at {place}].",
    "Please schedule {a_title}[ with {person}][ at {place}][ {day}][ {time}].",
    "need to book {a_title}[ at {place}][ {time}][ {day}][ with {person}]",
    "{Day}[ {time}]: {title}[ with {person}][ at {place}]",
    "{person} and I have {a_title}[ at {place}][ {day}][ {time}].",
    "Add to calendar: {title}[ with {person}][, {place}][, {day_bare}][, {time_bare}]",
    "I'm seeing {person} for {a_title}[ {day}][ {time}][ at {place}]",
    "don't let me forget {a_title}[ at {place}][ with {person}][ {time}][ {day}]!",
    "Booked {a_title}[ with {person}][ at {place}] for {day_bare}[ {time}].",
    "quick note - {title}[ {time}][ {day}][ at {place}][ w/ {person}]",
    "Could you pencil in {a_title}[ with {person}][ {day}][ {time}][ at {place}]?",
    "Meeting {person} for {a_title}[ at {place}][ {day}][ {time}]",
    "Heads up: {a_title}[ {day}][ {time}][ at {place}][ with {person}].",
    "{Time} {day} - {title}[ with {person}][ at {place}]",
    "we're doing {a_title}[ at {place}][ {day}][ {time}][ with {person}] lol",
    "Reminder for {day_bare}: {title}[ with {person}][ at {place}][ {time}]",
    "Set up {a_title}[ with {person}][ {day}][ at {place}][ {time}], thanks",
    "Can we do {a_title}[ with {person}][ {day}][ {time}][ at {place}]?",
    "My {title}[ with {person}][ at {place}] is {day}[ {time}]",
]

# -------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Event:
    title: str
    person: str | None
    place: str | None
    day: str | None
    time: str | None

    def answer(self) -> str:
        """The assistant's reply: compact one-line JSON, keys in a fixed order."""
        return json.dumps({key: getattr(self, key) for key in KEYS}, ensure_ascii=False)


def _fields_in(segment: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", segment)


def _render(template: str, values: dict[str, str | None]) -> str:
    def keep(match: re.Match) -> str:
        inner = match.group(1)
        return inner if all(values.get(f) for f in _fields_in(inner)) else ""

    text = re.sub(r"\[([^\]]*)\]", keep, template)
    return text.format(**{k: v or "" for k, v in values.items()})


def _required(template: str) -> set[str]:
    """Fields a template needs outside its optional segments, mapped to event keys."""
    outside = re.sub(r"\[[^\]]*\]", "", template)
    key_of = {"day_bare": "day", "Day": "day", "time_bare": "time", "Time": "time"}
    return {key_of.get(f, f) for f in _fields_in(outside)} & set(KEYS)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _hour12(hour: int) -> tuple[int, str]:
    return (hour - 1) % 12 + 1, "am" if hour < 12 else "pm"


def _time_phrase(rng: random.Random, hour: int, minute: int) -> str:
    """One surface form of a clock time, without a leading preposition."""
    h12, half = _hour12(hour)
    if hour == 12 and minute == 0 and rng.random() < 0.5:
        return rng.choice(["noon", "midday"])
    style = rng.randrange(6)
    if style == 0:
        return f"{hour:02d}:{minute:02d}"
    if style == 1:
        return f"{h12}{half}" if minute == 0 else f"{h12}:{minute:02d}{half}"
    if style == 2:
        return f"{h12}:{minute:02d} {half.upper()}"
    if style == 3:
        return f"{h12} {half}" if minute == 0 else f"{h12}.{minute:02d} {half}"
    if style == 4:
        part = "in the morning" if hour < 12 else "in the afternoon" if hour < 17 else "in the evening"
        if hour == 12 and minute == 0:
            return "noon"
        spoken = {0: f"{h12}", 15: f"quarter past {h12}", 30: f"half past {h12}", 45: f"{h12}:45"}[minute]
        return f"{spoken} {part}"
    return f"{h12}:{minute:02d}{half}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _day_phrases(rng: random.Random, day: str) -> tuple[str, str]:
    """(phrase with preposition, bare phrase) for a canonical day value."""
    if day in ("today", "tomorrow"):
        word = day if day == "today" or rng.random() < 0.8 else "tmrw"
        return word, word
    if day in WEEKDAYS:
        style = rng.randrange(4)
        bare = day if style < 3 else day[:3]
        return (f"this {bare}" if style == 1 else f"on {bare}"), bare
    month, number = day.split()
    n = int(number)
    style = rng.randrange(4)
    bare = [f"{month} {n}", f"{month} {_ordinal(n)}", f"{n} {month}", f"the {_ordinal(n)} of {month}"][style]
    return f"on {bare}", bare


def _title_phrases(title: str, article: str) -> tuple[str, str]:
    return title, f"{article} {title}" if article else title


def _person(rng: random.Random, activity_kind: str) -> str:
    roll = rng.random()
    if roll < 0.45:
        return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    if roll < 0.85 or activity_kind not in ("dental", "medical", "vet", "office"):
        return rng.choice(FIRST_NAMES)
    return f"{rng.choice(HONORIFICS)} {rng.choice(LAST_NAMES)}"


def _place(rng: random.Random, activity_kind: str) -> str:
    return f"{rng.choice(PLACE_PREFIXES)} {rng.choice(PLACE_KINDS[activity_kind])}"


def _day(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.2:
        return rng.choice(["today", "tomorrow"])
    if roll < 0.65:
        return rng.choice(WEEKDAYS)
    return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"


def _clock(rng: random.Random, hours: tuple[int, int]) -> tuple[int, int]:
    return rng.randint(*hours), rng.choice([0, 0, 0, 15, 30, 30, 45])


def _candidate(rng: random.Random) -> tuple[str, Event]:
    """Draw one event and one sentence describing it."""
    title, article, hours, kind = rng.choice(ACTIVITIES)
    present = {key: rng.random() < p for key, p in (("person", 0.7), ("place", 0.7), ("day", 0.8), ("time", 0.8))}
    template = rng.choice(TEMPLATES)
    for key in _required(template):
        present[key] = True

    hour, minute = _clock(rng, hours)
    event = Event(
        title=title,
        person=_person(rng, kind) if present["person"] else None,
        place=_place(rng, kind) if present["place"] else None,
        day=_day(rng) if present["day"] else None,
        time=f"{hour:02d}:{minute:02d}" if present["time"] else None,
    )
    bare_title, a_title = _title_phrases(title, article)
    day_phrase, day_bare = _day_phrases(rng, event.day) if event.day else (None, None)
    time_bare = _time_phrase(rng, hour, minute) if event.time else None
    at = "at" if rng.random() < 0.85 else "around"
    time_phrase = f"{at} {time_bare}" if time_bare and time_bare not in ("noon", "midday") else (
        f"at {time_bare}" if time_bare else None
    )
    values = {
        "title": bare_title, "a_title": a_title, "Title": _cap(bare_title), "A_title": _cap(a_title),
        "person": event.person, "place": event.place,
        "day": day_phrase, "day_bare": day_bare, "Day": _cap(day_phrase) if day_phrase else None,
        "time": time_phrase, "time_bare": time_bare, "Time": _cap(time_phrase) if time_phrase else None,
    }
    sentence = re.sub(r"\s+", " ", _render(template, values)).strip()
    return sentence, event


# ---------------------------------------------------------------------- near-duplicates


def char_ngrams(text: str) -> frozenset[str]:
    """The character 5-grams ``quicktune data check`` compares, so the demo passes its own check."""
    return frozenset(quality.shingles(quality.normalise(text)))


# ---------------------------------------------------------------------------- building


def _row(sentence: str, event: Event) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": sentence},
            {"role": "assistant", "content": event.answer()},
        ]
    }


def build(seed: int = SEED, n_train: int = TRAIN_ROWS, n_eval: int = EVAL_ROWS) -> tuple[list[dict], list[dict]]:
    """Train rows first, then eval rows whose (person, place) never occurs in train."""
    rng = random.Random(seed)
    accepted: list[frozenset[str]] = []
    train: list[dict] = []
    eval_rows: list[dict] = []
    train_pairs: set[tuple[str | None, str | None]] = set()

    attempts = 0
    while len(train) + len(eval_rows) < n_train + n_eval:
        attempts += 1
        if attempts > 200 * (n_train + n_eval):
            raise RuntimeError("could not draw enough distinct sentences; widen the pools")
        sentence, event = _candidate(rng)
        grams = char_ngrams(sentence)
        if any(quality.jaccard(grams, other) >= MAX_SIMILARITY for other in accepted):
            continue
        pair = (event.person, event.place)
        if len(train) < n_train:
            train.append(_row(sentence, event))
            train_pairs.add(pair)
        elif pair in train_pairs:
            continue
        else:
            eval_rows.append(_row(sentence, event))
        accepted.append(grams)
    return train, eval_rows


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes the file owner-only; these ship as ordinary data files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(out_dir: Path, seed: int = SEED) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    train, eval_rows = build(seed)
    train_path, eval_path = out_dir / "train.jsonl", out_dir / "eval.jsonl"
    _write_jsonl_atomic(train_path, train)
    _write_jsonl_atomic(eval_path, eval_rows)
    return train_path, eval_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m quicktune.demo.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder for train.jsonl and eval.jsonl (default: next to this file)")
    args = parser.parse_args(argv)
    for path in write(args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
