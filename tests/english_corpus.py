"""An offline English corpus for the tests: short stories from a small English grammar, learned in a few steps, so
tests can train tiny teachers on readable text without any download."""

from __future__ import annotations

import random

NAMES = ["Anna", "Ben", "Clara", "David", "Ella", "Finn", "Grace", "Hugo", "Iris", "Jack", "Lena", "Max", "Nora",
         "Oscar", "Paula", "Sam", "Tom", "Vera"]
ANIMALS = ["cat", "dog", "bird", "fox", "rabbit", "horse", "duck", "mouse", "frog", "owl"]
PLACES = ["the park", "the forest", "the beach", "the garden", "the river", "the old house", "the market",
          "the school", "the hill", "the village"]
THINGS = ["a red ball", "a small box", "a blue kite", "an old book", "a shiny key", "a warm hat", "a wooden boat",
          "a green apple", "a paper map", "a silver coin"]
FEELINGS = ["happy", "sad", "tired", "curious", "scared", "excited", "hungry", "proud", "calm", "surprised"]
WEATHER = ["It was a sunny morning.", "It was raining all day.", "The wind was cold.", "The sky was clear and blue.",
           "Snow covered the ground.", "It was a warm summer evening."]
ACTIONS = ["played with", "looked for", "found", "lost", "carried", "painted", "shared", "hid"]
ENDINGS = ["In the end, everyone went home {feel}.", "That night, {name} slept well.",
           "{name} smiled and said thank you.", "From that day on, they were best friends.",
           "It was the best day of the year.", "{name} could not wait to come back tomorrow."]


def story(rng: random.Random) -> str:
    name, friend = rng.sample(NAMES, 2)
    animal, place, thing = rng.choice(ANIMALS), rng.choice(PLACES), rng.choice(THINGS)
    feel, feel2 = rng.sample(FEELINGS, 2)
    lines = [
        rng.choice(WEATHER),
        f"{name} went to {place} with {friend}.",
        f"There they saw a {animal}.",
        f"The {animal} {rng.choice(ACTIONS)} {thing}.",
        f"{name} felt {feel}, and {friend} felt {feel2}.",
    ]
    if rng.random() < 0.5:
        lines.append(f'"Look at the {animal}!" said {friend}.')
    if rng.random() < 0.5:
        lines.append(f"They {rng.choice(ACTIONS)} {rng.choice(THINGS)} near {rng.choice(PLACES)}.")
    lines.append(rng.choice(ENDINGS).format(name=name, feel=rng.choice(FEELINGS)))
    return " ".join(lines)


def demo_documents(n: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [story(rng) for _ in range(n)]
