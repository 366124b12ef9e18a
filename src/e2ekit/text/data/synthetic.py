"""Built-in generated English datasets, so the demo and tests run with no download.

The sets are learnable but not trivial: cls uses negation and "but"/"although" contrasts,
pair swaps roles (same words, different meaning), NER has words that are a person in one
sentence and a place or company in another, and MRC paragraphs mention several cities and
years so a question must be read to pick the right one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from e2ekit.core.errors import ConfigError

GENERATOR_VERSION = 1
TASKS = ("cls", "pair", "ner", "mrc")
PARAMS = ("num_train", "num_dev", "seed")
CLS_LABELS = ["negative", "positive"]

# fmt: off
SUBJECTS = ["the movie", "the film", "the plot", "the acting", "the soundtrack", "this phone",
            "the battery", "the screen", "the camera", "the service", "the delivery",
            "this laptop", "the keyboard", "the hotel room", "the food", "the ending"]
POS = ["good", "great", "excellent", "wonderful", "impressive", "enjoyable", "reliable",
       "fantastic", "pleasant", "solid"]
NEG = ["bad", "terrible", "awful", "boring", "disappointing", "poor", "annoying", "weak",
       "clumsy", "useless"]
NEGATORS = ["not", "never", "hardly", "far from"]
INTENS = ["", "", "", "very", "really", "quite", "truly", "extremely", "rather"]
VERBS = ["was", "is", "seemed", "felt"]
FILLERS = ["i bought it last week", "my friend recommended it", "to be honest",
           "as far as i can tell", "after two weeks of use", "compared to the last one",
           "on the whole", "in my opinion", "i watched it on sunday", "the price was average",
           "it arrived on tuesday", "we tried it together", "my sister saw it too"]

PEOPLE = ["alice", "bob", "carol", "david", "emma", "frank", "grace", "henry", "irene", "jack"]
PLACES = ["paris", "london", "tokyo", "berlin", "madrid", "rome", "cairo", "lima", "oslo"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
ITEMS = [("car", "automobile"), ("sofa", "couch"), ("present", "gift"), ("bike", "bicycle"),
         ("film", "movie"), ("house", "home"), ("boat", "ship")]
ACTS = [("bought", "purchased", "buy"), ("fixed", "repaired", "fix"),
        ("found", "discovered", "find"), ("cleaned", "washed", "clean"),
        ("got", "received", "get")]
ADJS = [("big", "large", "small"), ("cheap", "inexpensive", "expensive"),
        ("fast", "quick", "slow"), ("quiet", "silent", "noisy"), ("pretty", "beautiful", "ugly")]

FIRST = ["John", "Mary", "Ahmed", "Li", "Sofia", "Carlos", "Anna", "Peter", "Maria", "Kenji"]
LAST = ["Smith", "Garcia", "Chen", "Muller", "Rossi", "Tanaka", "Brown", "Jordan", "Ford"]
LOCS = ["New York", "Paris", "San Diego", "Cape Town", "Berlin", "Lake Como", "Buenos Aires",
        "Oslo", "Hong Kong", "Rio de Janeiro", "Washington", "Jordan"]
ORGS = ["Acme Corporation", "Blue River Bank", "Northwind Traders", "United Steel Works",
        "Green Energy Group", "Apex Labs", "Ford", "Washington Post", "Red Cross",
        "Jordan Airlines"]
NER_TEMPLATES = [
    "{PER} works for {ORG} in {LOC} .", "{PER} flew to {LOC} last week .",
    "{ORG} opened a new office in {LOC} .", "yesterday {PER} met {PER} at the {ORG} office .",
    "the manager of {ORG} , {PER} , lives in {LOC} .", "{PER} said that {ORG} will hire staff .",
    "after visiting {LOC} , {PER} joined {ORG} .", "{LOC} is home to {ORG} .",
    "{PER} and {PER} moved from {LOC} to {LOC} .", "nothing happened at the meeting today .",
    "according to {PER} , the weather in {LOC} was cold .",
    "shares of {ORG} rose after {PER} resigned .",
]
NER_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]

TOWNS = ["Lorvik", "Pellham", "Ostara", "Brimford", "Calder Bay", "Nunsby", "Tarrow",
         "Elmsport", "Kestrel Point", "Vandor"]
FIELDS = ["chemistry", "law", "music", "economics", "architecture", "biology", "history"]
PRODUCTS = ["solar panels", "bicycles", "toys", "coffee machines", "accounting software",
            "sailing boats", "running shoes"]
HOBBIES = ["chess", "painting", "mountain climbing", "gardening", "jazz piano", "fishing"]
COMPANY = (["Bright", "Stone", "Quill", "Silver", "North", "Iron", "Cedar"],
           ["wave", "field", "works", "gate", "line", "forge"])
MRC_FACTS = {  # fact: (sentence template, [(answer slot, question template)])
    "born": ("{name} was born in {born} in {year}.",
             [("born", "Where was {name} born?"), ("year", "In what year was {name} born?")]),
    "field": ("{pron} studied {field} at the University of {uni}.",
              [("field", "What did {name} study?"), ("uni", "In which city did {name} study?")]),
    "company": ("In {founded}, {name} founded {company}, a company that makes {product}.",
                [("company", "Which company did {name} found?"),
                 ("founded", "When was {company} founded?"),
                 ("product", "What does {company} make?")]),
    "hq": ("{company} is based in {hq} and employs {staff} people.",
           [("hq", "Where is {company} based?"),
            ("staff", "How many people does {company} employ?")]),
    "hobby": ("In {poss} free time, {name} enjoys {hobby}.",
              [("hobby", "What does {name} enjoy in {poss} free time?")]),
}
# fmt: on


def _review(rng: random.Random, positive: bool) -> str:
    """A review whose label depends on negation and on which clause is the main one."""

    def clause(pos: bool, p_neg: float = 0.35) -> str:
        negate = rng.random() < p_neg
        adj = rng.choice(POS if pos != negate else NEG)
        words = [rng.choice(SUBJECTS), rng.choice(VERBS)]
        words += [rng.choice(NEGATORS)] if negate else [rng.choice(INTENS)]
        return " ".join(w for w in [*words, adj] if w)

    form = rng.choices(range(4), weights=(6, 2, 1, 1))[0]  # simple reviews are the majority
    if form == 0:
        text = f"{rng.choice(FILLERS)}, {clause(positive, 0.2)}"
    elif form == 1:
        text = f"{clause(not positive)}, but {clause(positive)}"
    elif form == 2:
        text = f"although {clause(not positive)}, {clause(positive)}"
    else:
        text = f"i would not say {clause(not positive, 0.0)}"
    while len(text.split()) < 10 or rng.random() < 0.3:  # neutral filler, 10-25 words
        filler = rng.choice(FILLERS)
        text = f"{filler}, {text}" if rng.random() < 0.5 else f"{text}, {filler}"
    return text + "."


def _pair(rng: random.Random, same: bool) -> tuple[str, str]:
    """A sentence and a paraphrase (same=True) or a near-copy whose meaning changed."""
    who, whom = rng.sample(PEOPLE, 2)
    s = {"p": who, "q": whom if rng.random() < 0.5 else None, "act": rng.choice(ACTS),
         "adj": rng.choice(ADJS), "item": rng.choice(ITEMS), "c": rng.choice(PLACES),
         "d": rng.choice(DAYS), "neg": False}  # fmt: skip

    def say(s: dict, syn: set[str], form: int) -> str:
        verb = s["act"][1 if "act" in syn else 0]
        adj = s["adj"][2] if s.get("anti") else s["adj"][1 if "adj" in syn else 0]
        obj = f"{'an' if adj[0] in 'aeiou' else 'a'} {adj} {s['item'][1 if 'item' in syn else 0]}"
        tail = (f" for {s['q']}" if s["q"] else "") + f" in {s['c']}"
        if s["neg"]:
            return f"{s['p']} did not {s['act'][2]} {obj}{tail} on {s['d']}"
        if form == 1:
            return f"on {s['d']}, {s['p']} {verb} {obj}{tail}"
        if form == 2:
            return f"{obj} was {verb} by {s['p']}{tail} on {s['d']}"
        return f"{s['p']} {verb} {obj}{tail} on {s['d']}"

    a = say(s, set(), rng.randrange(3))
    syn = {k for k in ("act", "adj", "item") if rng.random() < 0.5}
    t = dict(s)
    if not same:
        change = rng.choice(["p", "c", "d", "anti", "neg"] + (["swap", "swap"] if s["q"] else []))
        if change == "p":
            t["p"] = rng.choice([x for x in PEOPLE if x not in (who, whom)])
        elif change == "c":
            t["c"] = rng.choice([x for x in PLACES if x != s["c"]])
        elif change == "d":
            t["d"] = rng.choice([x for x in DAYS if x != s["d"]])
        elif change == "swap":
            t["p"], t["q"] = s["q"], s["p"]
        else:
            t[change] = True
    b = say(t, syn, rng.randrange(3))
    return a + ".", b + "."


def _ner(rng: random.Random) -> tuple[list[str], list[str]]:
    """A sentence from a template with multi-word PER/LOC/ORG entities and BIO tags."""
    tokens: list[str] = []
    tags: list[str] = []
    for part in rng.choice(NER_TEMPLATES).split():
        m = re.fullmatch(r"\{(PER|LOC|ORG)\}", part)
        kind = m.group(1) if m else "O"
        if kind == "O":
            words = [part]
        elif kind == "PER":
            words = [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.7 else [])
        else:
            words = rng.choice(LOCS if kind == "LOC" else ORGS).split()
        tokens += words
        tags += ["O"] if kind == "O" else [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
    return tokens, tags


def _render(template: str, values: dict[str, str]) -> tuple[str, dict[str, int]]:
    """Fill ``{slot}``s and return the text with each slot's first character offset."""
    out, starts, pos = [], {}, 0
    for k, piece in enumerate(re.split(r"\{(\w+)\}", template)):
        if k % 2:
            starts.setdefault(piece, pos)
            piece = values[piece]
        out.append(piece)
        pos += len(piece)
    return "".join(out), starts


def _paragraph(rng: random.Random, pid: str, labeled: bool) -> dict:
    """A SQuAD paragraph about a made-up founder, with 2-3 span questions."""
    she = rng.random() < 0.5
    born, uni, hq = rng.sample(TOWNS, 3)
    v = {"name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "pron": "She" if she else "He",
         "poss": "her" if she else "his", "born": born, "uni": uni, "hq": hq,
         "year": str(rng.randint(1940, 1990)), "founded": str(rng.randint(1991, 2020)),
         "field": rng.choice(FIELDS), "product": rng.choice(PRODUCTS),
         "company": rng.choice(COMPANY[0]) + rng.choice(COMPANY[1]),
         "staff": str(rng.randint(12, 9000)), "hobby": rng.choice(HOBBIES)}  # fmt: skip
    facts = ["born", "company", "hq"] + [f for f in ("field", "hobby") if rng.random() < 0.6]
    facts = ["born", *rng.sample(facts[1:], len(facts) - 1)]
    context, starts = _render(" ".join(MRC_FACTS[f][0] for f in facts), v)
    asks = [q for f in facts for q in MRC_FACTS[f][1]]
    qas = []
    for j, (slot, question) in enumerate(rng.sample(asks, rng.randint(2, 3))):
        answers = [{"text": v[slot], "answer_start": starts[slot]}] if labeled else []
        qas.append({"id": f"{pid}-{j}", "question": _render(question, v)[0], "answers": answers})
    return {"title": v["name"], "paragraphs": [{"context": context, "qas": qas}]}


def write_builtin(
    task: str, root: Path, *, num_train: int, num_dev: int, seed: int = 0
) -> dict[str, Path | None]:
    """Write train/dev/test (and labels.txt) for ``task`` into ``root``; same seed, same bytes."""
    if task not in TASKS:
        raise ConfigError(f"no built-in data for task '{task}'; available: {', '.join(TASKS)}")
    if num_train < 1 or num_dev < 1:
        raise ConfigError("builtin data needs num_train >= 1 and num_dev >= 1")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sizes = {"train": num_train, "dev": num_dev, "test": max(1, min(50, num_dev))}
    paths: dict[str, Path | None] = {}
    for split, n in sizes.items():
        rng = random.Random(f"{task}:{split}:{seed}")
        labeled = split != "test"
        if task == "mrc":
            articles, count = [], 0
            while count < n:
                art = _paragraph(rng, f"{split}-{len(articles)}", labeled)
                qas = art["paragraphs"][0]["qas"]
                art["paragraphs"][0]["qas"] = qas = qas[: n - count]
                count += len(qas)
                articles.append(art)
            doc = {"version": "1.1", "data": articles}
            path = root / f"{split}.json"
            path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            if task == "cls":
                head = ["label", "text_a"]
                rows = [[CLS_LABELS[k % 2], _review(rng, k % 2 == 1)] for k in range(n)]
            elif task == "pair":
                head = ["text_a", "text_b", "label"]
                rows = [[*_pair(rng, k % 2 == 1), str(k % 2)] for k in range(n)]
            else:
                head = ["text_a", "label"]
                rows = [[" ".join(x) for x in _ner(rng)] for _ in range(n)]
            rng.shuffle(rows)
            if not labeled:
                keep = [i for i, c in enumerate(head) if c != "label"]
                head, rows = [head[i] for i in keep], [[r[i] for i in keep] for r in rows]
            path = root / f"{split}.tsv"
            lines = ["\t".join(head)] + ["\t".join(r) for r in rows]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths[split] = path
    labels = {"cls": CLS_LABELS, "pair": ["0", "1"], "ner": NER_TAGS}.get(task)
    paths["labels"] = root / "labels.txt" if labels else None
    if labels:
        (root / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    return paths


def builtin_dir(task: str, params: dict[str, Any]) -> Path:
    """The cached folder of a built-in set, generated once per distinct params.

    Built in a temporary sibling and renamed into place, so a reader never sees a
    half-written folder and two racing processes end up sharing one copy.
    """
    if task not in TASKS:
        raise ConfigError(f"no built-in data for task '{task}'; available: {', '.join(TASKS)}")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ConfigError(f"builtin data has no parameter {', '.join(unknown)}; valid: {PARAMS}")
    full = {"num_train": 2000, "num_dev": 400, "seed": 0, **params}
    full = {k: int(full[k]) for k in PARAMS}
    key = json.dumps({**full, "task": task, "version": GENERATOR_VERSION}, sort_keys=True)
    env = os.environ.get("E2EKIT_DATA")  # same root as the seg kit's generated data
    cache = Path(env).expanduser() if env else Path.home() / ".cache" / "e2ekit" / "data"
    final = cache / "text" / f"{task}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    if (final / "done").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        write_builtin(task, tmp, **full)
        (tmp / "done").write_text(key + "\n", encoding="utf-8")
        if final.exists() and not (final / "done").is_file():
            shutil.rmtree(final, ignore_errors=True)  # a broken copy left by a crash
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "done").is_file():  # not another process's finished copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
