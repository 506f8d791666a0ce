"""Rebuild the shipped factuality corpus and held-out probes from the countryinfo package.

    pip install countryinfo==1.0.1   # MIT, (c) 2018 Porimol Chandro; its data comes from Wikipedia
    python pipelines/data/factuality/make_corpus.py

Writes ``corpus/countries.txt`` (one paragraph of facts per country: the snippets ``synth run
factuality`` asks questions about) and ``probes.jsonl`` (capital and continent questions about other
countries, never in the corpus: the held-out probes of ``synth eval factuality``). The facts are the
package's snapshot (its population and area figures date from the 2010s); a snippet is the reference
its questions are checked against, whatever the world says today.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = [
    "Germany", "France", "Italy", "Spain", "Poland", "Ukraine", "United Kingdom", "Russia", "Turkey",
    "Egypt", "Nigeria", "Kenya", "Ethiopia", "South Africa", "Morocco", "Ghana", "Algeria", "Japan",
    "China", "India", "Indonesia", "Pakistan", "Bangladesh", "Vietnam", "Thailand", "Philippines", "Iran",
    "Iraq", "Saudi Arabia", "South Korea", "United States", "Canada", "Mexico", "Brazil", "Argentina",
    "Colombia", "Venezuela", "Australia", "Nepal", "Uzbekistan",
]  # fmt: skip
HELD_OUT = [
    "Peru", "Chile", "Portugal", "Greece", "Sweden", "Norway", "Austria", "Hungary", "Cuba", "Ireland",
    "Finland", "Denmark", "Netherlands", "Belgium", "Romania", "Mongolia", "Malaysia", "Afghanistan",
    "Uganda", "Ecuador",
]  # fmt: skip
ALIASES = {"Ulan Bator": ["Ulaanbaatar"], "Americas": ["America"]}


def _the(name: str) -> str:
    return f"the {name}" if name.startswith(("United", "Philippines", "Netherlands", "Czech")) else name


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def paragraph(c: dict, names: dict[str, str]) -> str:
    name = _the(c["name"])
    region = "the Americas" if c["region"] == "Americas" else c["region"]
    lines = [f"{name[0].upper()}{name[1:]} is a country in {c['subregion']}, in {region}."]
    lines.append(f"Its capital is {c['capital'].rstrip('.')}.")
    if c.get("population"):
        lines.append(f"Its population was about {c['population']:,} people.")
    if c.get("area"):
        lines.append(f"Its area is {int(c['area']):,} square kilometres.")
    borders = [_the(names[b]) for b in c.get("borders") or [] if b in names]
    if borders:
        lines.append(f"It borders {_and(borders)}.")
    if c.get("callingCodes"):
        lines.append(f"Its international calling code is +{c['callingCodes'][0]}.")
    if c.get("currencies"):
        lines.append(f"Its currency code is {c['currencies'][0]}.")
    if c.get("demonym"):
        lines.append(f"Its people are called {c['demonym']}.")
    return " ".join(lines)


def main() -> None:
    from countryinfo import CountryInfo

    data = {v["name"]: v for v in CountryInfo.all().values()}
    names = {v["ISO"]["alpha3"]: v["name"] for v in data.values() if v.get("ISO")}
    (HERE / "corpus").mkdir(exist_ok=True)
    text = "\n\n".join(paragraph(data[n], names) for n in CORPUS)
    (HERE / "corpus" / "countries.txt").write_text(text + "\n", encoding="utf-8")
    with open(HERE / "probes.jsonl", "w", encoding="utf-8") as f:
        for n in HELD_OUT:
            c = data[n]
            name = _the(n)
            snippet = paragraph(c, names)
            capital = c["capital"]
            key = n.lower().replace(" ", "-")
            rows = [{"id": f"{key}-capital", "question": f"What is the capital of {name}?", "answer": capital,
                     "aliases": ALIASES.get(capital, []), "snippet": snippet}]  # fmt: skip
            if c["region"] != "Europe":  # most held-out countries are European: ask the others only
                # no list of continents in the question: a reply that echoes the list would name the answer
                question = f"On which continent is {name}?"
                rows.append({"id": f"{key}-continent", "question": question, "answer": c["region"],
                             "aliases": ALIASES.get(c["region"], []), "snippet": snippet})  # fmt: skip
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
