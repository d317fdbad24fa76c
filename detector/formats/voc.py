"""Pascal VOC XML: one ``Annotations/NAME.xml`` per image with its objects' boxes.

Boxes follow the VOC devkit: ``xmin``/``ymin`` are 1-based pixel indices and ``xmax``/``ymax``
inclusive, so Loupe's ``[x1, y1, x2, y2)`` is written as ``x1 + 1, y1 + 1, x2, y2`` (decimals kept
when a box is not on whole pixels). ``difficult`` maps to COCO's ``iscrowd`` (both mean "do not
count this one"); ``truncated`` has no Loupe field and is reported. Masks and keypoints are not
carried by VOC.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

from . import Format, FormatError, Plan, register
from .common import ImageIndex, category_like, exported_records, person_instance


def _detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".xml"
    return path.is_dir() and (any(path.glob("*.xml")) or (path / "Annotations").is_dir())


def _num(el, tag: str, where: str) -> float:
    node = el.find(tag)
    try:
        return float(node.text)
    except (AttributeError, TypeError, ValueError):
        raise FormatError(f"{where}: <{tag}> must be a number") from None


def _read(path: Path, project) -> Plan:
    if path.is_file():
        files = [path]
    else:
        folder = path / "Annotations" if (path / "Annotations").is_dir() else path
        files = sorted(folder.glob("*.xml"))
    if not files:
        raise FormatError(f"{path}: no VOC .xml files")
    existing = {c.name: c for c in project.categories()}
    index = ImageIndex(project.root, str(path))
    plan = Plan()
    truncated = 0
    for f in files:
        try:
            root = ET.parse(f).getroot()
        except (ET.ParseError, OSError) as exc:
            raise FormatError(f"{f}: not readable XML ({exc})") from exc
        if root.tag != "annotation":
            raise FormatError(f"{f}: the root element is <{root.tag}>, not <annotation>")
        name = (root.findtext("filename") or "").strip() or f.stem
        rel = index.find(name, f.name, stem=not PurePosixPath(name).suffix)
        img = plan.images.get(rel) or index.planned(rel, f.name)
        plan.images[rel] = img
        size = root.find("size")
        if size is not None and size.find("width") is not None:
            w, h = int(_num(size, "width", str(f))), int(_num(size, "height", str(f)))
            if (w, h) != (img.width, img.height):
                raise FormatError(f"{f}: <size> says {w}x{h} but {rel} is {img.width}x{img.height}")
        for i, obj in enumerate(root.findall("object")):
            where = f"{f}: object {i + 1}"
            label = (obj.findtext("name") or "").strip()
            if not label:
                raise FormatError(f"{where}: no <name>")
            bb = obj.find("bndbox")
            if bb is None:
                raise FormatError(f"{where}: no <bndbox>")
            x1, y1 = _num(bb, "xmin", where) - 1, _num(bb, "ymin", where) - 1
            x2, y2 = _num(bb, "xmax", where), _num(bb, "ymax", where)
            if x2 <= x1 or y2 <= y1:
                raise FormatError(f"{where}: an empty box ({x1 + 1}, {y1 + 1}, {x2}, {y2})")
            difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
            truncated += (obj.findtext("truncated") or "0").strip() in ("1", "true")
            plan.categories.setdefault(label, category_like(existing, label))
            img.instances.append((label, person_instance((x1, y1, x2, y2), crowd=difficult)))
    if truncated:
        plan.notes.append(f"'truncated' flags not kept ({truncated} objects): Loupe has no such field")
    return plan


def _fmt(v: float) -> str:
    return str(int(round(v))) if abs(v - round(v)) < 1e-6 else f"{v:.2f}"


def _write(project, out: Path, *, reviewed_only: bool = False) -> str:
    cats = {c.id: c for c in project.categories()}
    ann = out / "Annotations"
    ann.mkdir(parents=True, exist_ok=True)
    records = exported_records(project, reviewed_only)
    n = 0
    for rec, insts in records:
        root = ET.Element("annotation")
        ET.SubElement(root, "folder").text = str(PurePosixPath(rec.path).parent)
        ET.SubElement(root, "filename").text = PurePosixPath(rec.path).name
        ET.SubElement(root, "path").text = rec.path
        size = ET.SubElement(root, "size")
        for tag, v in (("width", rec.width), ("height", rec.height), ("depth", 3)):
            ET.SubElement(size, tag).text = str(v)
        ET.SubElement(root, "segmented").text = "0"
        for inst in insts:
            if inst.category_id not in cats:
                continue
            x1, y1, x2, y2 = inst.box
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = cats[inst.category_id].name
            ET.SubElement(obj, "pose").text = "Unspecified"
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = "1" if inst.crowd else "0"
            bb = ET.SubElement(obj, "bndbox")
            for tag, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
                ET.SubElement(bb, tag).text = _fmt(v)
            n += 1
        ET.indent(root)
        stem = PurePosixPath(rec.path).with_suffix("").as_posix().replace("/", "__")
        ET.ElementTree(root).write(ann / f"{stem}.xml", encoding="utf-8", xml_declaration=True)
    return f"wrote {ann}: {len(records)} images, {n} boxes, {len(cats)} classes"


register(Format("voc", "Pascal VOC XML: boxes per image ('difficult' as iscrowd); no masks or keypoints",
                _detect, _read, _write))
