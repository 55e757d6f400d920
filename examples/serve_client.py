"""Translate with a running `tfm serve`, using only the standard library (any LibreTranslate client works as well).

    tfm serve &                                               # the bundled dates model on http://127.0.0.1:8000
    python examples/serve_client.py "3rd of March, 2021" "July 4, 1976"
    python examples/serve_client.py --url http://127.0.0.1:5000 --scores "12.10.2030"
"""
import argparse
import json
import urllib.error
import urllib.request


def translate(url: str, texts: list[str], **fields) -> dict:
  """POST /translate: {"q": texts, ...} -> {"translatedText": [...], ...}; the server's error message on failure."""
  body = json.dumps({"q": texts, **fields}).encode("utf-8")
  request = urllib.request.Request(f"{url}/translate", data=body, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=60) as response: return json.load(response)
  except urllib.error.HTTPError as e:  # the server says what was wrong, as {"error": message}
    raise SystemExit(f"serve_client.py: {e.code}: {json.load(e).get('error', e.reason)}") from None
  except urllib.error.URLError as e:
    raise SystemExit(f"serve_client.py: no tfm serve at {url} ({e.reason}); start one with `tfm serve`") from None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("texts", nargs="+", metavar="TEXT")
  parser.add_argument("--url", default="http://127.0.0.1:8000", help="where tfm serve listens (default: %(default)s)")
  parser.add_argument("--source", default="auto", help="LibreTranslate's source field; tfm serve checks it only when started "
                      "with --source (default: auto)")
  parser.add_argument("--target", default="en", help="LibreTranslate's target field, likewise (default: en)")
  parser.add_argument("--scores", action="store_true", help="print each translation's score too")
  args = parser.parse_args()
  answer = translate(args.url, args.texts, source=args.source, target=args.target, scores=args.scores)
  for i, (text, translation) in enumerate(zip(args.texts, answer["translatedText"])):
    print(f"{text}\t{translation}" + (f"\t{answer['score'][i]:.4f}" if args.scores else ""))


if __name__ == "__main__":
  main()
