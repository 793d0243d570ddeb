"""The README fits a newcomer's first read, its links and the docs' links lead somewhere, and the code and
docs state facts or point to files in the repository, not to a specification, numbered issues or work
periods outside it; the lab notebook (docs/notebook.md) dates its entries and refers to them by date and topic."""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTSIDE_REFERENCES = re.compile(r'\bSPEC\b|(?i:\bsessions? \d|\bissues? \d|\bthe seed\b|\bseed\'s\b)')


def text_files():
    docs = glob.glob(os.path.join(ROOT, 'docs', '*.md'))
    code = [p for p in glob.glob(os.path.join(ROOT, '**', '*.py'), recursive=True)
            if '.venv' not in p]
    return [os.path.join(ROOT, 'README.md'), os.path.join(ROOT, 'data', 'README.md')] + docs + code


def test_the_readme_fits_250_lines():
    lines = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read().splitlines()
    assert len(lines) <= 250, len(lines)


def test_no_references_outside_the_repository():
    found = []
    for path in text_files():
        for n, line in enumerate(open(path, encoding='utf-8'), 1):
            if OUTSIDE_REFERENCES.search(line):
                found.append(f'{os.path.relpath(path, ROOT)}:{n}: {line.strip()[:100]}')
    spec_citation = 'as in ' + 'SP' + 'EC section 4'     # written apart, so this file passes its own check
    assert OUTSIDE_REFERENCES.search(spec_citation) and not OUTSIDE_REFERENCES.search('--seed 0')
    assert not found, '\n'.join(found)


def test_relative_links_of_the_readme_and_docs_exist():
    missing = []
    for path in [os.path.join(ROOT, 'README.md')] + glob.glob(os.path.join(ROOT, 'docs', '*.md')):
        for target in re.findall(r'\]\(([^)#\s]+)[^)]*\)', open(path, encoding='utf-8').read()):
            if '://' not in target and not os.path.exists(os.path.join(os.path.dirname(path), target)):
                missing.append(f'{os.path.relpath(path, ROOT)}: {target}')
    assert not missing, missing
