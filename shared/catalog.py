"""Load a catalog into `products`: `python -m shared.admin products load FILE`.

A JSON file (a list of `{"sku", "name", "price", "active"?}`, or `{"products": [...]}`)
or a CSV file with the header `sku,name,price[,active]`.  Prices are integer fen: JSON
integers (not 19.9, not 1990.0, not "1990"), CSV digits only (not 19.90, not 1,990).
SKUs follow checkout's format (letters, digits, `_`, `.`, `-`; 1 to 64).  Every line is
checked first and nothing is written when one is wrong: a half-loaded catalog would sell
at a mix of old and new prices.  Products missing from the file are left as they are.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from shared.checkout import SKU_RE
from shared.errors import BadRequest

MAX_PRODUCTS = 10_000
MAX_PRICE = 100_000_000          # 1,000,000 yuan for one item: beyond it, a typo
MAX_NAME = 64                    # characters; the order description is built from names
MAX_FILE_BYTES = 8 * 1024 * 1024
_CSV_ACTIVE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": True}


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price: int
    active: bool = True


class CatalogInvalid(BadRequest):
    code = "CATALOG_FILE_INVALID"

    def __init__(self, problems: list[str]):
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        super().__init__("the catalog file has problems; nothing was loaded:\n  " + "\n  ".join(shown),
                         details={"problems": len(problems)})
        self.problems = problems


def read_catalog(path: Path) -> list[Product]:
    """Every product of the file, checked; CatalogInvalid lists each problem by line."""
    if not path.is_file():
        raise CatalogInvalid([f"{path}: no such file"])
    if path.stat().st_size > MAX_FILE_BYTES:
        raise CatalogInvalid([f"{path}: larger than {MAX_FILE_BYTES // 1024 // 1024} MB"])
    text = path.read_text(encoding="utf-8-sig")
    rows = _json_rows(text) if path.suffix.lower() == ".json" else _csv_rows(text)
    problems: list[str] = []
    products: list[Product] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        product = _product(where, row, problems)
        if product is None:
            continue
        if product.sku in seen:
            problems.append(f"{where}: sku {product.sku} again (first at {seen[product.sku]})")
            continue
        seen[product.sku] = where
        products.append(product)
    if len(rows) > MAX_PRODUCTS:
        problems.append(f"more than {MAX_PRODUCTS} products")
    if not rows:
        problems.append("no products in the file")
    if problems:
        raise CatalogInvalid(problems)
    return products


def load_catalog(store, products: list[Product]) -> dict:
    known = {doc["sku"] for doc in store.list_products()}
    for product in products:
        store.upsert_product(product.sku, product.name, product.price, active=product.active)
    added = sum(1 for product in products if product.sku not in known)
    return {"loaded": len(products), "added": added, "updated": len(products) - added}


def _json_rows(text: str) -> list[tuple[str, object]]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CatalogInvalid([f"not JSON: {exc}"]) from None
    if isinstance(data, dict) and set(data) == {"products"}:
        data = data["products"]
    if not isinstance(data, list):
        raise CatalogInvalid(['a JSON catalog is a list of products, or {"products": [...]}'])
    return [(f"product {index + 1}", row) for index, row in enumerate(data)]


def _csv_rows(text: str) -> list[tuple[str, object]]:
    reader = csv.reader(io.StringIO(text))
    header = [name.strip().lower() for name in next(reader, [])]
    if header not in (["sku", "name", "price"], ["sku", "name", "price", "active"]):
        raise CatalogInvalid([f"line 1: the header must be sku,name,price[,active], not {','.join(header)}"])
    rows = []
    for number, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            rows.append((f"line {number}", f"{len(cells)} columns, the header has {len(header)}"))
            continue
        row: dict[str, object] = dict(zip(header, (cell.strip() for cell in cells), strict=True))
        price = row["price"]
        row["price"] = int(price) if isinstance(price, str) and price.isdigit() and price.isascii() else price
        active = str(row.get("active", "")).lower()
        row["active"] = _CSV_ACTIVE.get(active, row.get("active"))
        rows.append((f"line {number}", row))
    return rows


def _product(where: str, row, problems: list[str]) -> Product | None:
    if isinstance(row, str):
        problems.append(f"{where}: {row}")
        return None
    if not isinstance(row, dict):
        problems.append(f"{where}: not an object")
        return None
    unknown = set(row) - {"sku", "name", "price", "active"}
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    sku, name, price, active = row.get("sku"), row.get("name"), row.get("price"), row.get("active", True)
    before = len(problems)
    if not isinstance(sku, str) or not SKU_RE.match(sku):
        problems.append(f"{where}: sku {sku!r} is not a product code (letters, digits, _ . -; 1 to 64)")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        problems.append(f"{where}: name must be 1 to {MAX_NAME} characters")
    if type(price) is not int or not 1 <= price <= MAX_PRICE:
        problems.append(f"{where}: price {price!r} is not integer fen from 1 to {MAX_PRICE} (19.90 yuan is 1990)")
    if type(active) is not bool:
        problems.append(f"{where}: active must be true or false")
    if len(problems) > before or unknown:
        return None
    return Product(sku, name.strip(), price, active)
