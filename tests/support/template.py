"""Reads template.yaml for the offline tests, CloudFormation's short tags included.

  python3 template.py env TEMPLATE
      The functions' environment: Globals, each function's own (by binary name), and the
      parameters' defaults, as JSON. !Ref/!Sub stay as {"Ref": ...}/{"Fn::Sub": ...}.
  python3 template.py match-events TEMPLATE FUNCTION EVENT REFS
      For each JSON event read from stdin (one a line), "true" or "false" on stdout: whether
      the EventBridge rule EVENT of the function whose binary is FUNCTION matches it, with
      moto's EventBridge pattern matcher. REFS is a JSON object resolving the pattern's !Ref
      names (e.g. {"WorkerProject": "taskrunner-workers"}).
"""

import json
import sys

import yaml


class Loader(yaml.SafeLoader):
    pass


def _tag(name):
    def construct(loader, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        else:
            value = loader.construct_sequence(node)
        return {("Ref" if name == "Ref" else "Fn::" + name): value}

    return construct


for _name in ["Ref", "Sub", "GetAtt", "Join", "If", "Equals", "Select", "Split"]:
    Loader.add_constructor("!" + _name, _tag(_name))


def load(path):
    with open(path) as text:
        return yaml.load(text, Loader=Loader)


def functions(doc):
    """The template's functions by binary name."""
    return {
        resource["Metadata"]["BuildProperties"]["Binary"]: resource
        for resource in doc["Resources"].values()
        if resource["Type"] == "AWS::Serverless::Function"
    }


def environment(doc):
    return {
        "globals": doc["Globals"]["Function"]["Environment"]["Variables"],
        "parameters": {k: v.get("Default") for k, v in doc["Parameters"].items()},
        "functions": {
            binary: resource["Properties"].get("Environment", {}).get("Variables", {})
            for binary, resource in functions(doc).items()
        },
    }


def resolve(value, refs):
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            return refs[value["Ref"]]
        return {k: resolve(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, refs) for v in value]
    return value


def rule_pattern(doc, function, event, refs):
    rule = functions(doc)[function]["Properties"]["Events"][event]
    assert rule["Type"] == "EventBridgeRule", rule
    return resolve(rule["Properties"]["Pattern"], refs)


def main(argv):
    if argv[1] == "env":
        print(json.dumps(environment(load(argv[2]))))
    elif argv[1] == "match-events":
        from moto.events.models import EventPattern

        template, function, event, refs = argv[2:6]
        pattern = EventPattern.load(
            json.dumps(rule_pattern(load(template), function, event, json.loads(refs)))
        )
        for line in sys.stdin:
            if line.strip():
                print("true" if pattern.matches_event(json.loads(line)) else "false", flush=True)
    else:
        sys.exit(f"unknown command {argv[1]!r}; see the module's doc")


if __name__ == "__main__":
    main(sys.argv)
