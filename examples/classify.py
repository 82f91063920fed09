#!/usr/bin/env python3
"""classify.py - the program of forkpool's persistent example (classify.json).

A small naive Bayes sentiment model, trained once when the program starts
(the "load the model once per worker" pattern), then asked about many texts.
Standard library only.

The protocol (docs/plugins.md): forkpool writes one line per item to stdin,
the item's arguments as a JSON array; the program answers each with one line
on stdout, {"result": ...} or {"error": "..."}, and flushes it. Anything it
wants to log goes to stderr, which ends up in the server's log.
"""
import json
import math
import re
import sys

# The "model file": in real life, a large file read (or a model loaded) here.
TRAINING = [
    ("positive", "a wonderful, delightful film with great acting"),
    ("positive", "I loved it, brilliant and moving from start to finish"),
    ("positive", "excellent service, friendly staff, would happily come back"),
    ("positive", "great value, works perfectly, very happy with it"),
    ("positive", "beautiful, fun and surprisingly good"),
    ("positive", "the best day, everything was great and I enjoyed every minute"),
    ("negative", "a boring, awful film with terrible acting"),
    ("negative", "I hated it, dull and painful from start to finish"),
    ("negative", "rude staff, slow service, never again"),
    ("negative", "poor value, broke after a day, very disappointed"),
    ("negative", "ugly, tedious and surprisingly bad"),
    ("negative", "the worst day, everything went wrong and I regret every minute"),
]


def words(text):
    return re.findall(r"[a-z']+", text.lower())


class NaiveBayes:
    def __init__(self, examples):
        self.labels = sorted({label for label, _ in examples})
        self.docs = {label: 0 for label in self.labels}
        self.counts = {label: {} for label in self.labels}
        self.totals = {label: 0 for label in self.labels}
        self.vocabulary = set()
        for label, text in examples:
            self.docs[label] += 1
            for w in words(text):
                self.counts[label][w] = self.counts[label].get(w, 0) + 1
                self.totals[label] += 1
                self.vocabulary.add(w)

    def classify(self, text):
        known = [w for w in words(text) if w in self.vocabulary]
        if not known:
            raise ValueError("none of the words of the text are known to the model")
        n = sum(self.docs.values())
        v = len(self.vocabulary)
        scores = {}
        for label in self.labels:
            s = math.log(self.docs[label] / n)
            for w in known:
                s += math.log((self.counts[label].get(w, 0) + 1) / (self.totals[label] + v))
            scores[label] = s
        top = max(scores.values())
        z = sum(math.exp(s - top) for s in scores.values())
        label = max(scores, key=scores.get)
        return {"label": label, "p": round(1 / z, 4)}


def main():
    model = NaiveBayes(TRAINING)
    print(f"classify.py: model ready ({len(model.vocabulary)} words)", file=sys.stderr, flush=True)
    for line in sys.stdin:
        try:
            (text,) = json.loads(line)
            reply = {"result": model.classify(text)}
        except Exception as e:  # the item fails, the program carries on
            reply = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
