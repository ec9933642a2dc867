"""The shape world's words: its colours (with their albedo) and shapes. Kept free of heavy imports, so the
command line can list them in its help."""

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "green": (0.16, 0.68, 0.20),
    "blue": (0.14, 0.30, 0.86),
    "yellow": (0.95, 0.84, 0.14),
    "purple": (0.56, 0.20, 0.76),
    "orange": (0.98, 0.52, 0.08),
}
PRIMITIVES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid")
COMPOSITES = ("house", "mug", "chair", "snowman")
SHAPES = PRIMITIVES + COMPOSITES
VIEWS = ("front", "side", "back", "overhead")


def prior_vocabulary() -> dict:
    """The prompts a prior trained on this world knows, as its folder ships them (``vocabulary.json``): a pattern
    whose named groups must take one of their listed words, the form its captions take, and a sentence for the user."""
    return {
        "pattern": r"^\s*(?:(?:an?|the)\s+)?(?P<colour>\w+)\s+(?P<shape>\w+)\s*(?:,\s*(?P<view>"
        + "|".join(VIEWS)
        + r")\s+view)?\s*\.?\s*$",
        "words": {"colour": list(COLORS), "shape": list(SHAPES)},
        # how the training captions write a prompt (always "a", lower case; world/render.py caption): a prompt
        # that matches the pattern is read in this form, so "an orange torus" means what "a orange torus" does
        "caption": "a {colour} {shape}",
        "view_caption": "a {colour} {shape}, {view} view",
        "description": f"'a <colour> <shape>' with colour in {{{', '.join(COLORS)}}} and shape in {{{', '.join(SHAPES)}}}, "
        f"optionally followed by ', front view' (or {', '.join(VIEWS[1:])})",
    }
