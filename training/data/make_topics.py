"""Write `topics.jsonl` next to this script: 300 labelled topic-classification rows for SFT and k-fold tests.

    python training/data/make_topics.py      # stdlib only, deterministic (SEED); overwrites topics.jsonl

Rows: {"instruction": INSTRUCTION with the text, "response": label, "label": label}, 75 per label
(LABELS). Each text (8-30 words, one or two sentences) is built from the hand-written pieces below: a
subject, an action and a setting from one pool of its label, put in one of TEMPLATES, sometimes followed
by a second sentence of the same pool. Pieces are drawn from decks (each piece once per pass, reshuffled
per pass) so every piece is used about equally; a repeated text is drawn again.

Order: 75 blocks of 4 rows, each block holding every label once in a seeded random order, so any 4
consecutive rows hold all labels and a contiguous fold of 60 rows (5-fold) holds exactly 15 per label.

Checks before writing (asserts: a failure is a bug in the pieces, not user input): word counts, no
repeated text, and no text holding a word that gives away another label (GIVEAWAYS) or that belongs to
two topics at once (AMBIGUOUS: "season", "pitch", "course", ...).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

SEED = 20240611
ROWS_PER_LABEL = 75
MIN_WORDS, MAX_WORDS = 8, 30
FOLLOW_UP_SHARE = 0.4  # share of texts that get a second sentence
LABELS = ("sports", "science", "cooking", "travel")
INSTRUCTION = (
    "Which topic is this text about: sports, science, cooking or travel? Answer with one word.\n\nText: {text}"
)
OUTPUT = Path(__file__).with_name("topics.jsonl")

# Neutral framing shared by all labels, so the label lives in the content, not in the template.
TEMPLATES = (
    "{subject} {action} {setting}.",
    "{setting}, {subject} {action}.",
    "I read that {subject} {action} {setting}.",
    "My neighbour told me that {subject} {action} {setting}.",
    "It turns out that {subject} {action} {setting}.",
    "Did you hear that {subject} {action} {setting}?",
    "Believe it or not, {subject} {action} {setting}.",
)


@dataclass(frozen=True)
class Pool:
    """Pieces that combine freely: every subject fits every action, setting and follow-up."""

    subjects: tuple[str, ...]
    actions: tuple[str, ...]
    settings: tuple[str, ...]
    follow_ups: tuple[str, ...]


SPORTS_TEAMS = Pool(
    subjects=(
        "the home team", "the visiting side", "our local club", "the defending champions", "the underdogs",
        "the Hillcrest Hornets", "the women's team", "the under-21 squad", "the Riverside Rovers",
        "the Eastfield Eagles", "the newly promoted club", "the title favourites", "the amateur side",
        "the team captain and her teammates", "the club's youth side",
    ),
    actions=(
        "scored twice in the second half", "won the championship final after a penalty shootout",
        "lost the semi-final by a single goal", "came back from three goals down to win",
        "beat their fiercest rivals in a thrilling derby", "clinched a place in the playoffs",
        "defended the title with a dominant performance", "suffered a shock defeat against a lower-league side",
        "drew one-all after a late equaliser", "climbed to the top of the league table",
        "dominated possession but failed to score", "won the match with a last-minute goal",
        "survived relegation on the final day",
    ),
    settings=(
        "on Saturday night", "in front of a sold-out stadium", "last weekend", "on Sunday afternoon",
        "in front of their home fans", "despite heavy rain", "under the floodlights", "under a new head coach",
        "despite missing two key players", "on a freezing evening",
    ),
    follow_ups=(
        "The crowd roared when the final whistle blew.", "The coach praised the defence after the game.",
        "The referee booked three players in the first half.", "Supporters sang the club anthem all the way home.",
        "Next week they face the league leaders away from home.",
        "Ticket sales for the next home game have already doubled.",
        "The manager spoke to reporters for almost an hour afterwards.",
        "The highlights were shown on every sports channel that evening.",
    ),
)

SPORTS_ATHLETES = Pool(
    subjects=(
        "the long-distance runner", "a teenage sprinter", "the marathon runner", "the Olympic swimmer",
        "the world number one", "a young gymnast", "the veteran speed skater", "the defending world champion",
        "a little-known cyclist", "the national high jumper",
    ),
    actions=(
        "won a gold medal", "set a personal best", "finished on the podium",
        "pulled out of the competition with a shoulder injury", "qualified for the Olympic Games",
        "beat the favourite in a stunning upset", "finished fourth after a slow start",
        "took silver by a hundredth of a second",
    ),
    settings=(
        "at the world championships", "in Tokyo last week", "at the national championships", "on Sunday afternoon",
        "in front of a home crowd", "despite a late injury scare",
    ),
    follow_ups=(
        "The crowd gave a long standing ovation.", "Coaches say the best is yet to come.",
        "Sponsors are already lining up for the next event.", "It was a huge moment for the national federation.",
        "Rivals will have to wait another year for revenge.",
    ),
)

SCIENCE = Pool(
    subjects=(
        "a team of researchers", "scientists at a Swiss university", "an international research team",
        "two graduate students", "the lab's senior researcher", "a group of young scientists",
        "researchers at a national laboratory", "a doctoral student", "the university's research group",
        "researchers in Japan", "a team led by a Danish professor", "scientists working with NASA",
        "a postdoctoral researcher", "a consortium of twelve universities", "the institute's scientists",
        "a small lab in Canada", "a Nobel-winning scientist", "researchers from three countries",
        "an early-career scientist", "a group of researchers in Brazil", "an independent research group",
        "scientists at the institute of technology", "a professor and her two students", "the laboratory's director",
        "a research group in Australia",
    ),
    actions=(
        "published a study on how cells repair damaged DNA", "discovered a new species of deep-sea bacteria",
        "measured the expansion rate of the universe with new precision",
        "detected gravitational waves from two merging black holes", "sequenced the genome of a rare frog",
        "identified a protein that helps bacteria resist antibiotics", "tested a new theory about dark matter",
        "observed quantum entanglement between distant particles",
        "analysed rock samples to date an ancient volcanic eruption", "mapped the neurons in a fruit fly's brain",
        "built a more stable superconducting circuit", "found evidence of liquid water beneath the surface of Mars",
        "confirmed a prediction of Einstein's general relativity",
        "developed a vaccine candidate that primes the immune system",
        "measured how fast glaciers are melting in Greenland",
        "simulated the collision of two galaxies on a supercomputer",
        "described a fossil that links dinosaurs to modern birds",
        "synthesised a new catalyst for splitting water into hydrogen",
        "studied how coral reefs respond to ocean acidification", "tracked a comet's orbit with radio telescopes",
    ),
    settings=(
        "in a study published this week", "earlier this year", "after years of careful work",
        "according to a paper in Nature", "last month", "in results announced on Tuesday",
        "with funding from a national science foundation", "for the first time", "after analysing years of data",
        "in collaboration with other institutes", "this spring", "in a surprising result",
        "in work that took nearly ten years", "according to a preprint released online",
        "after a long series of tests",
    ),
    follow_ups=(
        "The findings appeared in a peer-reviewed journal.", "Other laboratories now plan to repeat the measurements.",
        "The result could change how textbooks explain the process.",
        "More data will be needed to confirm the hypothesis.",
        "The authors shared their raw data so others can check the analysis.",
        "Critics say more evidence is still needed.", "The discovery surprised even the scientists involved.",
        "The paper has been cited dozens of times in a few weeks.",
        "Peer reviewers called the method elegant and rigorous.", "A follow-up study is planned for next year.",
        "The researchers caution that the results are preliminary.",
        "The next step is a larger experiment with better instruments.",
    ),
)

COOKING = Pool(
    subjects=(
        "my grandmother", "the head chef", "a home cook", "the pastry chef", "my younger brother",
        "the baker on our street", "the woman next door", "a food blogger", "the evening cooking class",
        "the sous-chef",
        "my aunt", "two flatmates", "a first-year culinary student", "my father", "the caterer",
        "the dinner party host", "a self-taught cook", "the bakery owner", "my best friend", "the line cook",
        "my mother", "the cafe's cook", "an amateur baker", "the new kitchen apprentice", "my uncle",
    ),
    actions=(
        "simmered a tomato sauce with fresh basil", "kneaded bread dough until it was smooth and elastic",
        "roasted a whole chicken with lemon and garlic", "whisked eggs and sugar into a light sponge batter",
        "baked a batch of cinnamon rolls", "chopped onions and carrots for a vegetable soup",
        "fried crispy potato pancakes in butter", "marinated lamb chops in yoghurt and spices",
        "made fresh pasta by hand", "stirred a creamy mushroom risotto", "grilled aubergine slices with olive oil",
        "caramelised onions for a French onion soup", "folded blueberries into muffin batter",
        "stewed beef in red wine for hours", "toasted whole spices before grinding them for a curry",
        "rolled out pastry for an apple pie", "steamed dumplings filled with pork and ginger",
        "blended roasted peppers into a smooth soup", "glazed a ham with honey and mustard",
        "whipped cream to top a strawberry tart",
    ),
    settings=(
        "for Sunday lunch", "in a tiny flat kitchen", "last night", "for a family dinner", "before the guests arrived",
        "on a rainy afternoon", "this morning", "for a birthday dinner", "following an old family recipe",
        "for the first time", "ahead of the holiday feast", "after work on Friday", "for a dinner party of eight",
        "using ingredients from the market", "without looking at a recipe",
    ),
    follow_ups=(
        "The whole kitchen smelled wonderful.", "Everyone asked for a second helping.",
        "Leftovers went into the fridge for the next day's lunch.",
        "The recipe card is now stained with flour and butter.",
        "It took longer than planned, but it tasted delicious.",
        "The washing-up took almost as long as the cooking.", "Nobody could believe it was made from scratch.",
        "The trick, apparently, is patience and plenty of butter.", "The guests went home asking for the recipe.",
        "Not a single bite was left by the end of the evening.", "It will definitely be on the menu again next week.",
        "Tasting as you go is the most important step.",
    ),
)

TRAVEL = Pool(
    subjects=(
        "a group of backpackers", "my parents", "two old friends", "a young couple on their honeymoon",
        "our tour group", "a solo traveller", "the exchange students", "my cousin", "a retired teacher",
        "the tourists from Canada", "a family of four", "my sister and her partner", "two nurses on a career break",
        "a travel blogger", "my colleague", "my adventurous grandmother", "a pair of university friends",
        "the semester-abroad students", "a digital nomad", "my brother-in-law", "a newly retired couple",
        "a school exchange group", "an elderly couple from Ohio", "a first-time flyer", "my oldest friend",
    ),
    actions=(
        "booked a last-minute flight to Lisbon", "explored the old town of Dubrovnik on foot",
        "missed the connecting train in Vienna", "took the overnight ferry to the Greek islands",
        "waited two hours at passport control in Istanbul", "checked into a small hotel near the harbour",
        "hired a car to drive along the Norwegian fjords", "visited the ancient temples of Kyoto",
        "got lost in the narrow streets of Venice", "slept in a mountain hostel in the Alps",
        "queued for a visa at the embassy", "spent a night on a sleeper train across India",
        "toured the castles of Scotland by bus", "crossed the border into Chile by bus",
        "flew to Iceland to see the northern lights", "stayed with a host family in rural Portugal",
        "photographed the sunrise over Angkor Wat", "lost their luggage at a busy airport in Madrid",
        "backpacked through Vietnam from north to south", "rode a cable car up to a viewpoint above Cape Town",
    ),
    settings=(
        "last summer", "during the school holidays", "on a two-week holiday", "on their first trip abroad",
        "earlier this spring", "over the Easter break", "on a tight budget", "after months of planning",
        "despite a delayed departure", "during a gap year", "on a round-the-world trip", "with only a guidebook",
        "on a spontaneous getaway", "during the quiet months of the year", "with a single carry-on bag",
    ),
    follow_ups=(
        "Their luggage arrived two days later.", "The next stop on the itinerary is Prague.",
        "The journey home took almost a full day.", "It was a trip they will never forget.",
        "Their passports are now full of stamps.", "They are already planning the next trip.",
        "The photos from the trip filled an entire album.", "Booking everything in advance saved a lot of money.",
        "Jet lag hit hard on the first morning.", "A local guide shared stories about the history of the region.",
        "Travel insurance turned out to be a very good idea.", "The souvenirs barely fit into the suitcase.",
    ),
)

POOLS: dict[str, tuple[Pool, ...]] = {
    "sports": (SPORTS_TEAMS, SPORTS_ATHLETES),
    "science": (SCIENCE,),
    "cooking": (COOKING,),
    "travel": (TRAVEL,),
}

# Words that point at one label; a text of another label must not hold them.
GIVEAWAYS: dict[str, frozenset[str]] = {
    "sports": frozenset(
        "match game goal goals stadium league coach coaches fans squad club tournament championship championships "
        "referee scored players playoffs derby medal olympic athlete".split()
    ),
    "science": frozenset(
        "researchers scientists study experiment laboratory lab data theory hypothesis genome particles physicist "
        "journal findings measurements".split()
    ),
    "cooking": frozenset(
        "recipe kitchen chef oven baked dough sauce soup butter garlic flour menu delicious cook cooking fried "
        "roasted simmered dinner lunch dessert restaurant food breakfast".split()
    ),
    "travel": frozenset(
        "flight hotel passport passports airport train ferry luggage trip journey hostel visa tourists tour "
        "sightseeing itinerary border backpack suitcase".split()
    ),
}
# Words that belong to two topics at once ("season" the soup / the season), kept out of every text.
AMBIGUOUS = frozenset("season pitch course field cup bowl heat record recorded trained training serve".split())


def shuffled_deck(items: tuple[str, ...], rng: random.Random) -> Iterator[str]:
    """Yield `items` forever, each pass in a fresh seeded order, so every item is drawn about equally."""
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def compose_text(pool_decks: dict[str, Iterator[str]], rng: random.Random, follow_up: bool) -> str:
    """One text from the next subject, action and setting of a pool's decks, maybe with its follow-up."""
    template = rng.choice(TEMPLATES)
    sentence = template.format(
        subject=next(pool_decks["subjects"]), action=next(pool_decks["actions"]), setting=next(pool_decks["settings"])
    )
    sentence = sentence[0].upper() + sentence[1:]
    return f"{sentence} {next(pool_decks['follow_ups'])}" if follow_up else sentence


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def leaked_words(text: str, label: str) -> set[str]:
    """Words of `text` that give away another label or belong to two topics; empty when the text is clean."""
    found = set(words(text))
    others = set().union(*(GIVEAWAYS[other] for other in LABELS if other != label))
    return found & (others | AMBIGUOUS)


def texts_for_label(label: str, rng: random.Random) -> list[str]:
    """ROWS_PER_LABEL distinct texts of `label`, pools drawn in proportion to their subjects."""
    pools = POOLS[label]
    decks = [{f.name: shuffled_deck(getattr(pool, f.name), rng) for f in fields(Pool)} for pool in pools]
    weights = [len(pool.subjects) for pool in pools]
    texts: list[str] = []
    seen: set[str] = set()
    for _ in range(ROWS_PER_LABEL * 20):  # a bound, not a budget: repeats and out-of-range lengths are rare
        if len(texts) == ROWS_PER_LABEL:
            break
        pool_decks = rng.choices(decks, weights=weights)[0]
        text = compose_text(pool_decks, rng, follow_up=rng.random() < FOLLOW_UP_SHARE)
        if text in seen or not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            continue
        assert not leaked_words(text, label), (label, text, leaked_words(text, label))
        seen.add(text)
        texts.append(text)
    assert len(texts) == ROWS_PER_LABEL, f"{label}: only {len(texts)} distinct texts"
    return texts


def make_rows(seed: int = SEED) -> list[dict[str, str]]:
    """All rows in block order: each block of len(LABELS) rows holds every label once, shuffled."""
    rng = random.Random(seed)
    texts = {label: texts_for_label(label, rng) for label in LABELS}
    rows: list[dict[str, str]] = []
    for index in range(ROWS_PER_LABEL):
        block = [
            {"instruction": INSTRUCTION.format(text=texts[label][index]), "response": label, "label": label}
            for label in LABELS
        ]
        rng.shuffle(block)
        rows.extend(block)
    return rows


def main() -> None:
    rows = make_rows()
    all_texts = [row["instruction"].split("Text: ", 1)[1] for row in rows]
    assert len(set(all_texts)) == len(rows) == ROWS_PER_LABEL * len(LABELS)
    OUTPUT.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows ({ROWS_PER_LABEL} per label: {', '.join(LABELS)}) to {OUTPUT}")


if __name__ == "__main__":
    main()
