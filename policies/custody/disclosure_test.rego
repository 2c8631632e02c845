# Unit tests of the AI Act disclosure category (disclosure.rego): `custody policy test`.
package custody_test

import rego.v1

test_text_only_generation_is_fully_generated if {
	a := editor
	r := request("a red bicycle", [], {})
	d := decide(a, r, {}, {})
	d.obligations.disclosure == "fully_generated"
}

test_an_edit_of_an_input_image_is_partially_edited if {
	a := editor
	r := request("make the sofa teal", [photo], {})
	d := decide(a, r, {}, {})
	d.obligations.disclosure == "partially_edited"
}

test_people_in_the_edit_make_a_deep_fake if {
	a := editor
	r := request("make her smile", [photo], {})
	s := signals(["identifiable_people"])
	d := decide(a, r, s, {})
	d.obligations.disclosure == "deep_fake"
}

test_the_caller_may_say_it_depicts_a_real_person if {
	a := editor
	r := request("a portrait", [], {"depicts": "real_person"})
	d := decide(a, r, {}, {})
	d.obligations.disclosure == "deep_fake"
}

test_a_denied_turn_still_names_its_category if {
	a := editor
	r := request("x", [photo], {})
	s := signals(["watermark_removal"])
	d := decide(a, r, s, {})
	d.outcome == "deny"
	d.obligations.disclosure == "partially_edited"
}
