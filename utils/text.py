"""Label files and AU sequences as users' tools save them.

Spreadsheet exports and Windows editors write a UTF-8 byte-order mark, CRLF or lone CR line endings, and
some editors save UTF-16. `read_lines` reads all of these like plain UTF-8 text with LF endings (a UTF-16
file without a byte-order mark is recognised by its zero bytes), and refuses anything else with a message
that names the file, the line and the encoding it looks like, instead of a label row that silently fails to
match its image.
"""
import codecs

from utils.errors import DataError, MissingInput

# Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
BYTE_ORDER_MARKS = [(codecs.BOM_UTF32_LE, 'utf-32-le', 'UTF-32 LE'), (codecs.BOM_UTF32_BE, 'utf-32-be', 'UTF-32 BE'),
                    (codecs.BOM_UTF8, 'utf-8', 'UTF-8'), (codecs.BOM_UTF16_LE, 'utf-16-le', 'UTF-16 LE'),
                    (codecs.BOM_UTF16_BE, 'utf-16-be', 'UTF-16 BE')]


def unmarked_utf16(data):
    """'utf-16-le' or 'utf-16-be' if `data` looks like UTF-16 text without a byte-order mark, else None.

    Text in a Latin script saved as UTF-16 has a zero byte in every other position; UTF-8 text never
    contains zero bytes."""
    head = data[:4096 - 4096 % 2]
    if len(head) < 2 or b'\x00' not in head:
        return None
    odd_zeros, even_zeros = head[1::2].count(0), head[0::2].count(0)
    if odd_zeros >= 0.9 * (len(head) // 2) and even_zeros == 0:
        return 'utf-16-le'
    if even_zeros >= 0.9 * (len(head) // 2) and odd_zeros == 0:
        return 'utf-16-be'
    return None


def decode(path, data):
    """The text of a file's bytes: UTF-8 (with or without a byte-order mark), UTF-16 or UTF-32."""
    for mark, codec, name in BYTE_ORDER_MARKS:
        if data.startswith(mark):
            try:
                return data[len(mark):].decode(codec)
            except UnicodeDecodeError as e:
                raise DataError(path, f'starts with a {name} byte-order mark but is not valid {name} text '
                                      f'(byte {e.start + len(mark)})') from None
    codec = unmarked_utf16(data)
    if codec:
        try:
            return data.decode(codec)
        except UnicodeDecodeError as e:
            raise DataError(path, f'looks like {codec.upper()} text without a byte-order mark but is not valid '
                                  f'{codec.upper()} (byte {e.start})') from None
    if b'\x00' in data:
        raise DataError(path, 'contains zero bytes: a binary file, or text in an encoding other than UTF-8 '
                              'or UTF-16; save it as UTF-8 text')
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b'\n') + 1
        raise DataError(path, f'is not UTF-8 text (byte 0x{data[e.start]:02x}); it looks like Latin-1 or '
                              'Windows-1252: save it as UTF-8', line) from None


def read_lines(path, what='label file'):
    """The lines of a text file without their line endings (LF, CRLF or CR), decoded by `decode`."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        raise MissingInput(f'{path}: no such {what}') from None
    except IsADirectoryError:
        raise DataError(path, f'is a folder, not a {what}') from None
    except OSError as e:
        raise DataError(path, f'cannot be read: {e.strerror or e}') from None
    text = decode(path, data)
    return text.replace('\r\n', '\n').replace('\r', '\n').split('\n')
