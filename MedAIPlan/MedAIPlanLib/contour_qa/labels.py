"""Structure names: label-map value names (TotalSegmentator's ``total`` classes built in) and name matching.

Two structure sets are matched by name only: names compare case-insensitively, with spaces, underscores and
hyphens alike (``Spinal Cord`` = ``spinal_cord``); a mapping (``{reference name: candidate name}``, from a JSON
object or a two-column CSV) pairs names that differ.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

_TOTAL_FIRST = [
    "spleen",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "liver",
    "stomach",
    "pancreas",
    "adrenal_gland_right",
    "adrenal_gland_left",
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
    "esophagus",
    "trachea",
    "thyroid_gland",
    "small_bowel",
    "duodenum",
    "colon",
    "urinary_bladder",
    "prostate",
    "kidney_cyst_left",
    "kidney_cyst_right",
    "sacrum",
]
_TOTAL_VESSELS = [
    "heart",
    "aorta",
    "pulmonary_vein",
    "brachiocephalic_trunk",
    "subclavian_artery_right",
    "subclavian_artery_left",
    "common_carotid_artery_right",
    "common_carotid_artery_left",
    "brachiocephalic_vein_left",
    "brachiocephalic_vein_right",
    "atrial_appendage_left",
    "superior_vena_cava",
    "inferior_vena_cava",
    "portal_vein_and_splenic_vein",
    "iliac_artery_left",
    "iliac_artery_right",
    "iliac_vena_left",
    "iliac_vena_right",
    "humerus_left",
    "humerus_right",
    "scapula_left",
    "scapula_right",
    "clavicula_left",
    "clavicula_right",
    "femur_left",
    "femur_right",
    "hip_left",
    "hip_right",
    "spinal_cord",
    "gluteus_maximus_left",
    "gluteus_maximus_right",
    "gluteus_medius_left",
    "gluteus_medius_right",
    "gluteus_minimus_left",
    "gluteus_minimus_right",
    "autochthon_left",
    "autochthon_right",
    "iliopsoas_left",
    "iliopsoas_right",
    "brain",
    "skull",
]


def _totalsegmentator_total() -> dict[int, str]:
    """TotalSegmentator v2 task ``total`` (117 classes, ``map_to_binary.class_map["total"]``)."""
    names = list(_TOTAL_FIRST)
    names += ["vertebrae_S1"] + [f"vertebrae_L{n}" for n in range(5, 0, -1)]
    names += [f"vertebrae_T{n}" for n in range(12, 0, -1)] + [f"vertebrae_C{n}" for n in range(7, 0, -1)]
    names += _TOTAL_VESSELS
    names += [f"rib_left_{n}" for n in range(1, 13)] + [f"rib_right_{n}" for n in range(1, 13)]
    names += ["sternum", "costal_cartilages"]
    return {value: name for value, name in enumerate(names, start=1)}


#: Named label maps known without a file (``--label-names totalsegmentator``).
KNOWN_LABEL_MAPS = {"totalsegmentator": _totalsegmentator_total(), "total": _totalsegmentator_total()}


def label_names(text: str | None) -> dict[int, str] | None:
    """``{value: name}`` of a label map from ``totalsegmentator``, ``'1=spleen,5=liver'`` or a file of
    ``value name`` lines (a Slicer colour table works; ``#`` comments) or a two-column CSV."""
    if not text:
        return None
    if text.strip().lower() in KNOWN_LABEL_MAPS:
        return dict(KNOWN_LABEL_MAPS[text.strip().lower()])
    path = Path(text)
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        pairs = [re.split(r"[,\s]+", line.strip())[:2] for line in lines]
    else:
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    try:
        names = {int(value): name.strip() for value, name in pairs}
    except ValueError as error:
        raise ValueError(
            f"--label-names needs 'totalsegmentator', 'value=name' pairs separated by commas or a "
            f"file of 'value name' lines, got {text!r}."
        ) from error
    if not names or not all(names.values()):
        raise ValueError(f"--label-names gives no name for some value: {text!r}.")
    return names


def read_mapping(path) -> dict[str, str]:
    """``{reference name: candidate name}`` from a JSON object or a CSV of two columns (header optional)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"The mapping file {path} does not exist; give a JSON object or a two-column CSV "
            "'reference name, candidate name'."
        )
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f'The mapping {path} must be a JSON object of names, e.g. {{"Liver": "liver"}}.')
        return {str(k): v for k, v in data.items()}
    rows = [r for r in csv.reader(text.splitlines()) if len(r) >= 2 and r[0].strip() and not r[0].startswith("#")]
    if rows and rows[0][0].strip().lower() in ("reference", "reference name", "ref"):
        rows = rows[1:]
    if not rows:
        raise ValueError(f"The mapping {path} has no 'reference name, candidate name' rows.")
    return {r[0].strip(): r[1].strip() for r in rows}


def name_key(name: str) -> str:
    """The form names are compared in: lower case, spaces, underscores and hyphens as one underscore."""
    return re.sub(r"[\s_\-]+", "_", str(name).strip().lower())


def match_names(
    reference: list[str], candidate: list[str], mapping: dict[str, str] | None = None
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Pairs ``(reference name, candidate name)`` by name (``mapping`` first), then the unmatched names of
    the reference and of the candidate. A mapping entry naming a structure absent from either set is a
    ``ValueError`` listing what is there."""
    mapping = dict(mapping or {})
    ref_keys = {name_key(n): n for n in reference}
    cand_keys = {name_key(n): n for n in candidate}
    pairs, used = [], set()
    for ref_name, cand_name in mapping.items():
        r, c = ref_keys.get(name_key(ref_name)), cand_keys.get(name_key(cand_name))
        if r is None or c is None:
            which = f"'{ref_name}' in the reference" if r is None else f"'{cand_name}' in the candidate"
            raise ValueError(
                f"The mapping names {which}, which has no such structure; the reference has "
                f"{', '.join(reference)}; the candidate has {', '.join(candidate)}."
            )
        pairs.append((r, c))
        used.add(name_key(c))
    mapped = {name_key(r) for r, _ in pairs}
    for name in reference:
        key = name_key(name)
        if key not in mapped and key in cand_keys and key not in used:
            pairs.append((name, cand_keys[key]))
            used.add(key)
    matched_ref = {name_key(r) for r, _ in pairs}
    return (
        pairs,
        [n for n in reference if name_key(n) not in matched_ref],
        [n for n in candidate if name_key(n) not in used],
    )
