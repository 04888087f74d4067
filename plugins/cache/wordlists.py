"""Word lists for the guards (English). Data only; see ``guards.py`` for their use."""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


NEGATIONS = _words("""not no never none nobody nothing neither nor without cannot cant dont doesnt didnt isnt
arent wasnt werent wont shouldnt wouldnt couldnt avoid avoiding except lack lacking""")

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_ORDS = ["zeroth", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
         "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth", "eighteenth",
         "nineteenth"]
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
NUMBER_WORDS: dict[str, str] = {w: str(i) for i, w in enumerate(_ONES)}
NUMBER_WORDS.update({w: str(i) for i, w in enumerate(_ORDS)})
NUMBER_WORDS.update({w: str(v) for w, v in _TENS.items()})
NUMBER_WORDS.update({w[:-1] + "ieth": str(v) for w, v in _TENS.items()})
NUMBER_WORDS.update({"hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
                     "trillion": "1000000000000", "dozen": "12", "half": "0.5", "twice": "2x", "thrice": "3x",
                     "once": "1x", "single": "1", "double": "2x", "triple": "3x", "quarter": "0.25",
                     "hundredth": "100", "thousandth": "1000"})

# (axis, sign). The same axis may be reached from several words.
_POLAR_GROUPS = {
    "power": ("enable enabled enabling activate activated activation", "disable disabled disabling deactivate "
              "deactivated deactivation"),
    "size": ("increase increased increasing raise raising boost boosting grow growing maximize expand expanding "
             "high higher more bigger larger longer gain", "decrease decreased decreasing reduce reduced reducing "
             "low lower lowering minimize shrink shrinking smaller fewer less shorter lose"),
    "membership": ("add adding added insert inserting include including attach attaching join joining "
                   "subscribe subscribing", "remove removing removed rid delete deleting deleted exclude excluding "
                   "detach detaching leave leaving unsubscribe unsubscribing"),
    "install": ("install installing installed mount mounting mounted", "uninstall uninstalling uninstalled "
                "unmount unmounting unmounted"),
    "connect": ("connect connecting connected", "disconnect disconnecting disconnected"),
    "value": ("good great positive healthy healthier benefit benefits beneficial advantage advantages pros best "
              "better safe safer safest helpful", "bad poor negative unhealthy harm harmful harms disadvantage "
              "disadvantages cons worst worse unsafe dangerous risky risks drawbacks"),
    "extreme": ("maximum max highest largest biggest most greatest top", "minimum min lowest smallest least "
                "bottom"),
    "order": ("ascending increasing", "descending"),
    "time": ("before prior earlier", "after later afterwards"),
    "transfer": ("import importing imported upload uploading uploaded", "export exporting exported download "
                 "downloading downloaded"),
    "crypt": ("encrypt encrypting encrypted encode encoding encoded", "decrypt decrypting decrypted decode "
              "decoding decoded"),
    "lock": ("lock locking locked", "unlock unlocking unlocked"),
    "access": ("allow allowing allowed permit permitted accept accepting unblock grant", "block blocking blocked "
               "deny denying denied forbid forbidden reject rejecting revoke"),
    "visible": ("show showing shown visible unhide reveal display", "hide hiding hidden invisible conceal"),
    "run": ("start starting started begin beginning launch launching open opening resume", "stop stopping "
            "stopped end ending quit kill close closing shut shutdown pause halt"),
    "truth": ("true correct right valid legal possible", "false incorrect wrong invalid illegal impossible"),
    "trade": ("buy buying bought purchase", "sell selling sold"),
    "outcome": ("win winning won pass passing succeed success", "lose losing lost fail failing failure"),
    "case": ("uppercase upper capital capitalize", "lowercase lower"),
    "feeling": ("love like likes enjoy agree", "hate dislike dislikes disagree"),
    "direction": ("up upward upwards north east left", "down downward downwards south west right"),
    "temperature": ("hot warm warmer heat heating", "cold cool cooler colder cooling"),
}
POLARITY: dict[str, tuple[str, int]] = {}
for _axis, (_plus, _minus) in _POLAR_GROUPS.items():
    for _w in _plus.split():
        POLARITY.setdefault(_w, (_axis, 1))
    for _w in _minus.split():
        POLARITY.setdefault(_w, (_axis, -1))
# Words too common to mean a polarity alone.
for _w in ("right", "left", "like", "more", "most", "top", "open", "end", "display", "capital", "east", "west",
           "north", "south", "up", "down", "leave", "including", "close", "possible", "better", "best", "great",
           "good", "correct", "lower", "lose"):
    POLARITY.pop(_w, None)
# Keep the important ones where their meaning is unambiguous enough.
POLARITY.update({"good": ("value", 1), "bad": ("value", -1), "better": ("value", 1), "worse": ("value", -1),
                 "best": ("value", 1), "worst": ("value", -1), "lower": ("size", -1), "up": ("direction", 1),
                 "down": ("direction", -1)})

# Phrasal verbs matched as "verb ... particle" (see guards._PHRASAL); "* particle" is the fallback.
PHRASAL_POLARITY: dict[str, tuple[str, int]] = {
    "* on": ("power", 1), "* off": ("power", -1),
    "zoom in": ("zoom", 1), "zoom out": ("zoom", -1),
    "log in": ("session", 1), "log out": ("session", -1), "logged in": ("session", 1),
    "logged out": ("session", -1), "sign in": ("session", 1), "sign out": ("session", -1),
    "signed in": ("session", 1), "signed out": ("session", -1),
    "opt in": ("membership", 1), "opt out": ("membership", -1), "opted in": ("membership", 1),
    "opted out": ("membership", -1),
    "went up": ("direction", 1), "went down": ("direction", -1), "go up": ("direction", 1),
    "go down": ("direction", -1), "goes up": ("direction", 1), "goes down": ("direction", -1),
    "scroll up": ("direction", 1), "scroll down": ("direction", -1), "speed up": ("speed", 1),
    "slow down": ("speed", -1), "back up": ("backup", 1),
}

STOPWORDS = _words("""a an the and or but if then so of in on at by for with about as into onto to from up down
is are was were be been being am do does did doing have has had having i me my mine we us our you your yours he him
his she her hers it its they them their this that these those there here what which who whom whose when where why
how can could would should will shall may might must please tell give show me let lets just also some any
all each every other such own same than too very s t can't what's it's i'm that's there's how's who's where's
why's when's i've you're don't doesn't isn't aren't thing things way ways really""")

# Capitalised at the start of a sentence, these are ordinary words, not names.
COMMON_WORDS = STOPWORDS | _words("""write explain describe translate summarize summarise list compare calculate
convert find suggest recommend help create make generate compose fix refactor define name give tell show provide
set get add remove turn switch is are do does did can could would should will what when where why who which how
hi hello hey thanks thank ok okay yes no not never also now then first next finally again here there please
imagine assume consider suppose pretend act answer reply respond rewrite rephrase review check correct edit
improve simplify shorten expand continue complete draft plan build design implement install use run start stop
enable disable open close delete update upgrade change keep look read see try cook bake clean learn teach study
buy sell pay send call text email book order return is isn't are aren't was wasn't why's in on at for from with
without after before during since until while because although though if unless whether my your our their his
her its this that these those some many much most more few several each every any all both either neither one
two three four five six seven eight nine ten best top good great bad worst new old big small long short high low
fast slow easy hard simple quick tips ideas ways steps reasons examples benefits advantages disadvantages pros
cons symptoms causes rules facts fun interesting healthy common popular famous important main key different
difference similar which's who's what's how's where's when's is it are there do you does can you could you
give me tell me show me""")

_GAZ = {
    "languages": """english french german spanish italian portuguese dutch russian chinese mandarin cantonese japanese
korean arabic hindi bengali urdu turkish greek latin hebrew polish swedish norwegian danish finnish czech hungarian
romanian ukrainian vietnamese thai indonesian malay swahili persian farsi""",
    "tech": """python java javascript typescript rust golang ruby php swift kotlin scala haskell perl lua dart
elixir erlang clojure c++ c# csharp fortran cobol matlab bash powershell sql mysql postgres postgresql sqlite
mongodb redis kafka rabbitmq react vue angular svelte django flask fastapi rails laravel spring express node nodejs
numpy pandas scipy pytorch tensorflow keras docker kubernetes terraform ansible linux ubuntu debian fedora centos
windows macos mac osx ios android chrome firefox safari edge excel powerpoint git github gitlab aws azure gcp s3
ec2 lambda nginx apache html css json xml yaml toml csv pdf http https tcp udp ssh ssl tls vpn gpg""",
    "places": """france germany spain italy portugal england britain uk scotland ireland wales russia china japan
korea india pakistan brazil argentina mexico canada usa america australia egypt nigeria kenya turkey greece
poland sweden norway denmark finland netherlands belgium switzerland austria ukraine israel iran iraq vietnam
thailand indonesia philippines chile peru colombia cuba paris london berlin madrid rome lisbon athens moscow
beijing tokyo seoul delhi mumbai cairo sydney melbourne toronto vancouver chicago boston seattle miami
york california texas florida prague vienna amsterdam brussels dublin""",
}
GAZETTEER: dict[str, str] = {w: w for group in _GAZ.values() for w in group.split()}
GAZETTEER.update({"golang": "go", "postgresql": "postgres", "nodejs": "node", "csharp": "c#", "osx": "macos",
                  "britain": "uk", "england": "uk", "america": "usa"})

# Words the polarity guard already compared: the substitution guard ignores them.
POLAR_WORDS = frozenset(POLARITY) | frozenset(("turn", "switch", "on", "off"))

CONTRACTIONS = {"re": "are", "m": "am", "ll": "will", "ve": "have", "d": "would"}
CONTRACTED_NOT = {"can": "can", "won": "will", "don": "do", "doesn": "does", "didn": "did", "isn": "is",
                  "aren": "are", "wasn": "was", "weren": "were", "shouldn": "should", "wouldn": "would",
                  "couldn": "could", "haven": "have", "hasn": "has", "hadn": "had", "mustn": "must"}

# Interchangeable in a request: swapping one for another does not change the question.
_SYNONYM_GROUPS = """write compose create draft generate make produce
explain describe define summarize summarise outline clarify
give provide list suggest recommend share offer name
fix repair solve resolve debug
help assist
quick fast rapid
big large huge
small little tiny
picture photo image
movie film
kid kids child children
error bug issue problem
autumn fall
car automobile
tip tips advice
way method
improve enhance
use utilize utilise
begin start
choose pick select
purpose point
times multiplied multiply
famous known renowned
"""
SYNONYMS: dict[str, set[str]] = {}
for _line in _SYNONYM_GROUPS.strip().splitlines():
    _group = set(_line.split())
    for _w in _group:
        SYNONYMS.setdefault(_w, set()).update(_group)



# -- equivalences for the verifier (verify.py): pairs that say the same thing ----------------
# A missing pair only makes a miss (the verifier refuses what it cannot explain), never a wrong hit.
# Words as the verifier sees them: lower case, plural "s" dropped (textnorm._singular).

#: British = American vocabulary (several American words separated by "|").
_BRITISH_AMERICAN = """
aubergine = eggplant; courgette = zucchini; lift = elevator; flat = apartment; petrol = gasoline | gas;
nappy = diaper; trainer = sneaker; tap = faucet; biscuit = cookie; holiday = vacation; jumper = sweater;
windscreen = windshield; film = movie; pavement = sidewalk; lorry = truck; rubbish = trash | garbage;
dustbin = trashcan | garbage can | trash can; bin = trashcan | trash can | garbage can; queue = line;
mobile = cellphone; mobile phone = cellphone | cell phone; postcode = zip code | zipcode;
post code = zip code | zipcode; postman = mailman | mail carrier; crisp = chip | potato chip; chip = fry | french fry;
sweet = candy; motorway = highway | freeway; boot = trunk; bonnet = hood; dummy = pacifier; pram = stroller;
pushchair = stroller; cot = crib; math = maths; autumn = fall; torch = flashlight;
wardrobe = closet; cooker = stove; hob = stovetop; mince = ground beef; minced beef = ground beef;
coriander = cilantro; rocket = arugula; spring onion = scallion | green onion; candyfloss = cotton candy;
ice lolly = popsicle; high street = main street;
car park = parking lot | parking garage; petrol station = gas station; underground = subway; tube = subway;
railway = railroad; timetable = schedule; headteacher = principal; headmaster = principal; cv = resume;
cheque = check; estate agent = realtor | real estate agent;
washing up liquid = dish soap; kitchen roll = paper towel; cling film = plastic wrap; clingfilm = plastic wrap;
tin = can; hoover = vacuum; trouser = pant; waistcoat = vest; dressing gown = bathrobe | robe;
flannel = washcloth; zip = zipper; sellotape = scotch tape; drawing pin = thumbtack;
indicator = turn signal; number plate = license plate; roundabout = traffic circle; zebra crossing = crosswalk;
aerial = antenna; takeaway = takeout; starter = appetizer; fizzy drink = soda; aeroplane = airplane; jug = pitcher;
plait = braid; caster sugar = superfine sugar; icing sugar = powdered sugar;
bicarbonate soda = baking soda; porridge = oatmeal; jacket potato = baked potato
"""

#: Words that mean the same in any question they stand in.
_SAME = """
sofa = couch; big = large; bigger = larger; biggest = largest; quick = fast; quicker = faster;
quickest = fastest; begin = start; purchase = buy; kid = child; automobile = car; plane = airplane;
made = created; maker = creator
"""


def _equivalences(*tables: str) -> frozenset[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for table in tables:
        for item in table.split(";"):
            if not item.strip():
                continue
            left, _, right = item.partition("=")
            x = " ".join(left.split())
            for alt in right.split("|"):
                y = " ".join(alt.split())
                out.update(((x, y), (y, x)))
    return frozenset(out)


EQUIVALENT = _equivalences(_BRITISH_AMERICAN, _SAME)
