"""The DreamBooth dataset's layout (google/dreambooth, Ruiz et al. 2023, Sec. 4.1): one folder
of photos per subject, and prompts_and_classes.txt whose "subject_name,class" table names each
subject's class noun (backpack_dog,backpack; bear_plushie,stuffed animal)."""

from __future__ import annotations

from pathlib import Path

from dbdpo.errors import UserError

TABLE_FILE = "prompts_and_classes.txt"
TABLE_HEADER = "subject_name,class"


def read_subjects(folder: Path) -> dict[str, str]:
    """{subject: class noun} in the table's order, each subject's photo folder checked.

    The table runs from its header line to the first blank line after it."""
    table = Path(folder) / TABLE_FILE
    try:
        lines = [line.strip() for line in table.read_text().splitlines()]
    except OSError as e:
        raise UserError(f"{table}: cannot read the DreamBooth dataset's class table ({e.strerror}); "
                        f"pass the dataset folder (the one holding {TABLE_FILE} and a folder per subject)") from None
    if TABLE_HEADER not in lines:
        raise UserError(f"{table}: no '{TABLE_HEADER}' header line: not the DreamBooth dataset's class table")
    subjects: dict[str, str] = {}
    for number, line in enumerate(lines[lines.index(TABLE_HEADER) + 1:], start=lines.index(TABLE_HEADER) + 2):
        if not line:
            break
        name, comma, class_noun = line.partition(",")
        if not comma or not name.strip() or not class_noun.strip() or name.strip() in subjects:
            raise UserError(f"{table}, line {number}: {line!r} is not a new 'subject,class' row")
        subjects[name.strip()] = class_noun.strip()
    if not subjects:
        raise UserError(f"{table}: the '{TABLE_HEADER}' table has no rows")
    missing = [name for name in subjects if not (Path(folder) / name).is_dir()]
    if missing:
        raise UserError(f"{folder}: no photo folder for subject {missing[0]} of {TABLE_FILE} "
                        f"({len(missing)} missing): download the whole dataset")
    return subjects
