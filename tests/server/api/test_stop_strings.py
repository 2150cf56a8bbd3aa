from llmdoctor.server.api.stop_strings import StopStringMatcher


def feed_all(matcher, pieces):
    out, stopped = [], False
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            break
    return "".join(out), stopped


def test_stop_string_within_one_piece_cuts_before_it():
    assert feed_all(StopStringMatcher(["\n\n"]), ["Paris.\n\nNext"]) == ("Paris.", True)


def test_stop_string_across_pieces_is_found():
    assert feed_all(StopStringMatcher(["STOP"]), ["abc S", "T", "OP more"]) == ("abc ", True)


def test_stop_string_prefix_is_held_back_until_decided():
    matcher = StopStringMatcher(["END"])
    assert matcher.feed("the E") == ("the ", False)
    assert matcher.feed("N") == ("", False)


def test_stop_string_false_start_is_released():
    matcher = StopStringMatcher(["END"])
    matcher.feed("the EN")
    assert matcher.feed("D") == ("", True)
    matcher = StopStringMatcher(["END"])
    matcher.feed("the EN")
    assert matcher.feed("ough") == ("ENough", False)


def test_stop_string_flush_returns_held_text_at_end():
    matcher = StopStringMatcher(["END"])
    matcher.feed("last E")
    assert matcher.flush() == "E"


def test_stop_string_earliest_of_several_wins():
    assert feed_all(StopStringMatcher(["world", "lo"]), ["hello world"]) == ("hel", True)


def test_stop_string_none_configured_passes_text_through():
    assert StopStringMatcher([]).feed("anything E") == ("anything E", False)
