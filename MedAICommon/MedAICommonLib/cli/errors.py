"""One line that keeps an error's cause, for ``medai COMMAND: error: ...``.

ITK's exceptions start with a source location (``.../itkImageBase.hxx:77:``) and put the reason
(``ITK ERROR: ImageBase(0x...): Zero-valued spacing is not supported``) on a later line; printing
only the first line would lose it.
"""

from __future__ import annotations

import re

_ITK_REASON = re.compile(r"(?:ITK ERROR|itk::ERROR|ERROR):\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?(.+)")
_LOCATION = re.compile(r"^\S+\.(?:hxx|cxx|txx|h|cpp):\d+:?\s*$")


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line, with its reason (not a source location) kept."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        match = _ITK_REASON.search(line)
        if match and len(lines) > 1:
            head = lines[0] if not _LOCATION.match(lines[0]) and not lines[0].startswith("Exception thrown") else ""
            reason = match.group(1).strip()
            return f"{head} {reason}".strip() if head and reason not in head else reason
    if len(lines) > 1 and (lines[0].endswith(":") or _LOCATION.match(lines[0])):
        return " ".join(lines[:2])
    return lines[0]
