"""Active learning over HTTP: random and test-time-augmentation disagreement."""

from __future__ import annotations


def test_random_returns_an_unlabelled_image(label_server):
    response = label_server.post("/activelearning/random", json={})
    assert response.status_code == 200, response.text
    assert response.json()["id"] in {"cxr0", "cxr1", "cxr2", "vol0"}


def test_tta_ranks_unlabelled_radiographs_most_uncertain_first(label_server):
    response = label_server.post("/activelearning/tta", json={"model": "cxr_lungs"})
    assert response.status_code == 200, response.text
    result = response.json()
    scores = [score for _, score in result["ranking"]]
    assert {image for image, _ in result["ranking"]} == {"cxr0", "cxr1", "cxr2"}
    assert scores == sorted(scores, reverse=True) and result["id"] == result["ranking"][0][0]
    assert all(0 <= s < 0.5 for s in scores) and max(scores) > 0


def test_tta_on_volumes(label_server):
    result = label_server.post("/activelearning/tta", json={"model": "xray_tomography"}).json()
    assert result["id"] == "vol0" and result["score"] > 0


def test_unknown_strategy_is_an_error(label_server):
    response = label_server.post("/activelearning/no_such_strategy", json={})
    assert response.status_code == 404 and "no_such_strategy" in response.json()["detail"]
