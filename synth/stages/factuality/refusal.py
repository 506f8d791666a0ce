"""What counts as a refusal: a reply whose opening says the model does not know, is not sure, or
cannot answer (English phrasings). Used to tell refusals from answers everywhere in the recipe and
its evaluation: an answer that refuses is not informative; a generated refusal that does not refuse
is rejected; a held-out reply that refuses is counted as a refusal."""

from __future__ import annotations

import re

_REFUSAL = re.compile(
    r"\b(?:i\s*(?:do\s*not|don'?t|don’t)\s*(?:know|have\s+(?:enough|reliable|that|any)|recall|remember)"
    r"|i\s*(?:am|'m|’m)\s*(?:not\s+(?:sure|certain|confident|aware)|unsure|uncertain|unable|afraid)"
    r"|i\s*(?:cannot|can'?t|can’t|could\s*not|couldn'?t)\s*(?:answer|say|tell|confirm|verify|be\s+sure)"
    r"|not\s+(?:sure|certain)\s+(?:about|of|what|which|who|where|when)"
    r"|no\s+(?:reliable|verified|accurate)\s+information"
    r"|unable\s+to\s+(?:answer|confirm|verify))",
    re.IGNORECASE,
)
OPENING_CHARS = 240


def is_refusal(text: str) -> bool:
    """Whether the reply's opening declines to answer."""
    return bool(_REFUSAL.search((text or "")[:OPENING_CHARS]))
